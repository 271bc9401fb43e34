package main

// Private topics: the signed tokens (JWTs) that say which topics a client may read or
// publish to, where a request carries its token, the keys that verify it, the topic
// patterns a token lists, and the CORS answer that lets a browser send its cookie to
// another origin. With no key configured, every topic is public and none of this runs.

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// tokenLeeway is how far this server's clock may disagree with the token issuer's: a
// token is taken from its nbf minus this until its exp plus this, and a stream ends at
// exp plus this. Five seconds covers clocks kept by NTP and no more.
const tokenLeeway = 5 * time.Second

// maxTokenLength is the longest token read, in bytes. A token with a few topic patterns
// is well under 1 KiB; a longer one is refused before any parsing.
const maxTokenLength = 8 << 10

// minSecretLength is the shortest JWT_SECRET taken: HS256 needs a key as long as its
// hash (RFC 7518, section 3.2).
const minSecretLength = 32

// accessTokenParam is the query parameter that carries a token for clients that can set
// neither a header nor a cookie.
const accessTokenParam = "access_token"

// authFailure says why a request was refused a private topic; it is a metric label and
// never names the token or its subject.
type authFailure string

// The ways a request fails authorization.
const (
	authMissing   authFailure = "missing"   // no token where one is needed: 401
	authInvalid   authFailure = "invalid"   // a token that does not verify, or sent twice: 401
	authExpired   authFailure = "expired"   // a token past its exp: 401
	authForbidden authFailure = "forbidden" // a valid token that does not grant a topic asked for: 403
)

// authFailures lists every authFailure, for the metrics made at start-up.
var authFailures = []authFailure{authMissing, authInvalid, authExpired, authForbidden}

// authError is a refusal: why, for the metric, and a short reason for the answer that
// never quotes the token.
type authError struct {
	failure authFailure
	reason  string
}

// status is the HTTP status of the refusal: 403 for a valid token without the topic,
// 401 otherwise.
func (e *authError) status() int {
	if e.failure == authForbidden {
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// sseClaims are the claims a token carries: the registered ones (exp, nbf, aud, iss, sub)
// and "sse", the topic patterns it may read and publish to.
type sseClaims struct {
	SSE sseGrant `json:"sse"`
	jwt.RegisteredClaims
}

// claimFields are the claims the server reads, as the json tags of sseClaims name them, and
// the dates among them: a claim in another case, or a date written as a string (which
// jwt.NumericDate takes), would be read one way here and maybe another upstream.
var claimFields = jsonFields{
	"sse": {fields: jsonFields{"subscribe": {}, "publish": {}}},
	"iss": {}, "sub": {}, "aud": {}, "jti": {},
	"exp": {number: true}, "nbf": {number: true}, "iat": {number: true},
}

// UnmarshalJSON reads claims whose JSON has one reading only (checkStrictJSON). The parser
// hands it the decoded claims segment, so each token is checked once, before its signature,
// at the cost of one more pass over at most maxTokenLength bytes.
func (c *sseClaims) UnmarshalJSON(text []byte) error {
	if refused := checkStrictJSON(text, claimFields); refused != nil {
		return &tokenJSONError{part: "claims", refused: refused}
	}
	type plain sseClaims // sseClaims without this method, for encoding/json to fill
	return json.Unmarshal(text, (*plain)(c))
}

// tokenJSONError is a token whose header or claims break the strict JSON rules: an invalid
// token, whose reason names the rule without quoting the token.
type tokenJSONError struct {
	part    string // "header" or "claims"
	refused *strictJSONError
}

// Error names the part of the token and the rule it breaks.
func (e *tokenJSONError) Error() string {
	return e.part + ": " + e.refused.withoutKey()
}

// sseGrant is the "sse" claim: {"subscribe":["orders/42","prices/*"],"publish":["orders/**"]}.
type sseGrant struct {
	Subscribe []string `json:"subscribe"`
	Publish   []string `json:"publish"`
}

// verifyKey is one key that verifies tokens and the algorithms it verifies: HS256 for
// the secret, RS256, ES256 or EdDSA for a public key of that type, never another.
type verifyKey struct {
	id   string // the JWK's kid, if any: a token naming a kid is checked with that key alone
	key  any    // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	algs []string
}

// authConfig is what the command line and the environment say about tokens.
type authConfig struct {
	keys     []verifyKey // from JWT_SECRET and -jwt-key-file; none means every topic is public
	audience string      // -jwt-audience: a token must name it in aud, if set
	issuer   string      // -jwt-issuer: a token's iss must be it, if set
	cookie   string      // -jwt-cookie: the cookie that carries a token
	public   []string    // -public-topics: patterns of topics that need no token
	origins  []string    // -allowed-origins: origins whose pages may send credentials
}

// authorizer checks the tokens of requests for private topics and of publishers, and
// counts every refusal by why.
type authorizer struct {
	cfg      authConfig
	parser   *jwt.Parser
	failures map[authFailure]prometheus.Counter
}

// newAuthorizer returns the authorizer for cfg, with its refusals counted in reg, or nil
// when cfg has no key: then every topic is public.
func newAuthorizer(cfg authConfig, reg *prometheus.Registry) *authorizer {
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sse_auth_failures_total",
		Help: "Requests refused a private topic or a publish, by why: missing, invalid, expired or forbidden.",
	}, []string{"reason"})
	reg.MustRegister(failures)
	if len(cfg.keys) == 0 {
		return nil
	}
	var methods []string
	for _, k := range cfg.keys {
		for _, alg := range k.algs {
			if !slices.Contains(methods, alg) {
				methods = append(methods, alg)
			}
		}
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(tokenLeeway), jwt.WithExpirationRequired()}
	if cfg.audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.audience))
	}
	if cfg.issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.issuer))
	}
	a := &authorizer{cfg: cfg, parser: jwt.NewParser(opts...), failures: make(map[authFailure]prometheus.Counter)}
	for _, f := range authFailures {
		a.failures[f] = failures.WithLabelValues(string(f))
	}
	return a
}

// authorizeSubscribe checks that r may read every topic of topics that -public-topics
// does not cover, and returns when the stream must end (its token's exp plus the leeway, or
// the zero time for a stream of public topics alone) and what private events the stream
// may read: those of a topic its token grants (none, nil, without a token). A nil
// authorizer allows all.
func (a *authorizer) authorizeSubscribe(r *http.Request, topics []string) (time.Time, func([]string) bool, *authError) {
	var private []string
	for _, topic := range topics {
		if a.isPrivate(topic) {
			private = append(private, topic)
		}
	}
	if len(private) == 0 {
		return time.Time{}, nil, nil
	}
	claims, err := a.verifyRequest(r)
	if err != nil {
		return time.Time{}, nil, a.refuse(err)
	}
	for _, topic := range private {
		if !matchesAny(claims.SSE.Subscribe, topic) {
			return time.Time{}, nil, a.refuse(&authError{authForbidden, "the token does not allow reading topic " + topic})
		}
	}
	reader := func(topics []string) bool {
		for _, topic := range topics {
			if matchesAny(claims.SSE.Subscribe, topic) {
				return true
			}
		}
		return false
	}
	return claims.ExpiresAt.Add(tokenLeeway), reader, nil
}

// isPrivate reports whether topic, of the hub's own dialect, needs a token: a JWT key is
// set and -public-topics does not cover it. Its events are private on every face, so that
// a Mercure subscriber without a token cannot read them either.
func (a *authorizer) isPrivate(topic string) bool {
	return a != nil && !matchesAny(a.cfg.public, topic)
}

// verifyRequest finds r's token and verifies it. A token from the cookie counts only on a
// request from this origin (no Origin header: a browser sends none on a same-origin GET)
// or from one of -allowed-origins: any other page's browser would hide the answer from it
// anyway, because the answer does not echo its origin, so the stream is refused before it
// holds a place.
func (a *authorizer) verifyRequest(r *http.Request) (*sseClaims, *authError) {
	token, fromCookie, err := tokenFrom(r, a.cfg.cookie)
	if err != nil {
		return nil, err
	}
	if origin := r.Header.Get("Origin"); fromCookie && origin != "" && !slices.Contains(a.cfg.origins, origin) {
		return nil, &authError{authForbidden, "a cookie counts only from the origins in -allowed-origins"}
	}
	return a.verify(token)
}

// refuse counts err and returns it.
func (a *authorizer) refuse(err *authError) *authError {
	a.failures[err.failure].Inc()
	return err
}

// tokenFrom returns the token r carries: from "Authorization: Bearer", else from the
// cookie named cookie, else from ?access_token=. A token in both the header and the query
// is refused (RFC 6750, section 2: a client uses one method), as are two headers or two
// query values; a cookie, which the browser adds by itself, yields to the header. fromCookie
// says where the token came from.
func tokenFrom(r *http.Request, cookie string) (token string, fromCookie bool, _ *authError) {
	headers := r.Header.Values("Authorization")
	switch len(headers) {
	case 0:
	case 1:
		scheme, value, ok := strings.Cut(headers[0], " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(value) == "" {
			return "", false, &authError{authInvalid, "Authorization is not Bearer <token>"}
		}
		token = strings.TrimSpace(value)
	default:
		return "", false, &authError{authInvalid, "more than one Authorization header"}
	}
	var query []string
	if r.URL.RawQuery != "" {
		query = r.URL.Query()[accessTokenParam]
	}
	switch {
	case len(query) > 1:
		return "", false, &authError{authInvalid, "more than one " + accessTokenParam + " parameter"}
	case len(query) == 1 && token != "":
		return "", false, &authError{authInvalid, "a token in both Authorization and " + accessTokenParam + ": send one"}
	}
	if token == "" {
		if c, err := r.Cookie(cookie); err == nil && c.Value != "" {
			token, fromCookie = c.Value, true
		} else if len(query) == 1 {
			token = query[0]
		}
	}
	switch {
	case token == "":
		return "", false, &authError{authMissing, "a token is needed: Authorization: Bearer, the " + cookie + " cookie or " + accessTokenParam}
	case len(token) > maxTokenLength:
		return "", false, &authError{authInvalid, "the token is over " + strconv.Itoa(maxTokenLength) + " bytes"}
	}
	return token, fromCookie, nil
}

// verify checks token's signature with a configured key for its algorithm, then its exp,
// nbf, aud and iss, and returns its claims. The reason of an error names what failed,
// never the token.
func (a *authorizer) verify(token string) (*sseClaims, *authError) {
	claims := new(sseClaims)
	_, err := a.parser.ParseWithClaims(token, claims, a.keyFor)
	var twoWays *tokenJSONError
	switch {
	case err == nil:
		return claims, nil
	case errors.As(err, &twoWays):
		return nil, &authError{authInvalid, twoWays.Error()}
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, &authError{authInvalid, "malformed token"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, &authError{authInvalid, "bad signature or algorithm"}
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return nil, &authError{authInvalid, "wrong audience"}
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return nil, &authError{authInvalid, "wrong issuer"}
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return nil, &authError{authInvalid, "token not valid yet"}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return nil, &authError{authInvalid, "token without exp"}
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, &authError{authExpired, "token expired"}
	default:
		return nil, &authError{authInvalid, "invalid token"}
	}
}

// errCritical is the keyFor error for a token whose header names parameters in crit.
var errCritical = errors.New("the token's header has crit parameters, which are not understood")

// errNoKey is the keyFor error for a token that no configured key may verify.
var errNoKey = errors.New("no key for this algorithm and kid")

// keyFor returns the keys that may verify t: those whose algorithms include t's and, when
// t names a kid, whose kid is that one (a key without a kid matches any). The parser has
// already refused an algorithm no key takes, and none is ever taken; each key verifies
// only its own algorithms, so the RSA key is never used as an HMAC secret. A header that
// names a member twice (alg or kid read as the last of two) is refused first.
func (a *authorizer) keyFor(t *jwt.Token) (any, error) {
	// RFC 7515, section 4.1.11: a header parameter the verifier must understand, and this
	// one understands none.
	if _, ok := t.Header["crit"]; ok {
		return nil, errCritical
	}
	segment, _, _ := strings.Cut(t.Raw, ".")
	header, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return nil, err // the parser decoded it already: not reached
	}
	if refused := checkStrictJSON(header, nil); refused != nil {
		return nil, &tokenJSONError{part: "header", refused: refused}
	}
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range a.cfg.keys {
		if slices.Contains(k.algs, alg) && (kid == "" || k.id == "" || k.id == kid) {
			set.Keys = append(set.Keys, k.key)
		}
	}
	switch len(set.Keys) {
	case 0:
		return nil, errNoKey
	case 1:
		return set.Keys[0], nil
	}
	return set, nil
}

// verifyPublisher verifies the JWT of a publish request, which only the Authorization
// header carries: a publisher is a program, not a browser.
func (a *authorizer) verifyPublisher(r *http.Request) (*sseClaims, *authError) {
	authorization := r.Header.Get("Authorization")
	if authorization == "" {
		return nil, a.refuse(&authError{authMissing, "publishing needs Authorization: Bearer with the -publish-token or a JWT"})
	}
	scheme, token, ok := strings.Cut(authorization, " ")
	token = strings.TrimSpace(token)
	switch {
	case !ok || !strings.EqualFold(scheme, "Bearer") || token == "":
		return nil, a.refuse(&authError{authInvalid, "Authorization is not Bearer <token>"})
	case len(token) > maxTokenLength:
		return nil, a.refuse(&authError{authInvalid, "the token is over " + strconv.Itoa(maxTokenLength) + " bytes"})
	}
	claims, err := a.verify(token)
	if err != nil {
		return nil, a.refuse(err)
	}
	return claims, nil
}

// authorizePublish checks the JWT of a publish request to topic: a token whose publish
// claim covers topic passes, a valid one that does not is forbidden.
func (a *authorizer) authorizePublish(claims *sseClaims, topic string) *authError {
	if !matchesAny(claims.SSE.Publish, topic) {
		return a.refuse(&authError{authForbidden, "the token does not allow publishing to topic " + topic})
	}
	return nil
}

// Topic patterns, as -public-topics and the sse claim write them: a topic name whose
// segments (between slashes) may be "*", which matches exactly one segment of any
// non-empty text, and whose last segment may be "**", which matches one or more segments.
// Nothing else is special: "orders/4*" matches only a topic of that name.
//
//	orders/42     orders/42 only
//	orders/*      orders/42, not orders, orders/42/items
//	orders/**     orders/42, orders/42/items, not orders
//	*/public      news/public, not a/b/public
//	**            every topic

// checkPattern says which rule a topic pattern breaks, or returns nil: a topic name as
// checkTopic allows, with "**" only as the last segment and "*" only as a whole segment.
func checkPattern(pattern string) error {
	if err := checkTopic(strings.ReplaceAll(pattern, "*", "x")); err != nil {
		return err
	}
	segments := strings.Split(pattern, "/")
	for i, segment := range segments {
		switch {
		case segment == "**" && i < len(segments)-1:
			return errors.New(`"**" may only be the last segment of a pattern`)
		case segment != "*" && segment != "**" && strings.Contains(segment, "*"):
			return fmt.Errorf("%q: a wildcard is a whole segment, * or **", segment)
		}
	}
	return nil
}

// matchesAny reports whether topic matches any of patterns.
func matchesAny(patterns []string, topic string) bool {
	for _, p := range patterns {
		if matchTopic(p, topic) {
			return true
		}
	}
	return false
}

// matchTopic reports whether topic matches pattern, segment by segment, without
// allocating. A pattern that checkPattern refuses matches no topic: a topic holds no "*".
func matchTopic(pattern, topic string) bool {
	for {
		p, pRest, pMore := strings.Cut(pattern, "/")
		t, tRest, tMore := strings.Cut(topic, "/")
		switch {
		case p == "**" && !pMore:
			return topic != ""
		case p == "*":
			if t == "" {
				return false
			}
		case p != t:
			return false
		}
		if pMore != tMore {
			return false
		}
		if !pMore {
			return true
		}
		pattern, topic = pRest, tRest
	}
}

// corsPolicy answers the CORS headers of /sse: an origin listed in -allowed-origins gets
// itself echoed with credentials allowed, so its pages may send a cookie with
// EventSource's withCredentials; any other gets "*", enough for anonymous streams.
type corsPolicy struct {
	origins []string
}

// setHeaders sets the CORS headers of an answer to a request from origin (its Origin
// header, "" if none). With a list, every answer varies by Origin, so a cache never gives
// one origin's answer to another.
func (p corsPolicy) setHeaders(header http.Header, origin string) {
	p.apply(origin, header.Set)
}

// apply sets, with set, the CORS headers of an answer to a request from origin: the one
// decision for the stream, which speaks net/http, and the preflight, which speaks Fiber.
func (p corsPolicy) apply(origin string, set func(key, value string)) {
	if len(p.origins) == 0 {
		set("Access-Control-Allow-Origin", "*")
		return
	}
	set("Vary", "Origin")
	if origin != "" && slices.Contains(p.origins, origin) {
		set("Access-Control-Allow-Origin", origin)
		set("Access-Control-Allow-Credentials", "true")
		return
	}
	set("Access-Control-Allow-Origin", "*")
}

// loadKeyFile reads the public keys in path: PEM blocks (PUBLIC KEY, RSA PUBLIC KEY or
// CERTIFICATE) or a JWK set ({"keys":[...]}). A private key is refused: the server only
// verifies, and a file it reads should not be able to sign.
func loadKeyFile(path string) ([]verifyKey, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	trimmed := strings.TrimSpace(string(body))
	if strings.HasPrefix(trimmed, "{") {
		return parseJWKS([]byte(trimmed))
	}
	var keys []verifyKey
	rest := []byte(trimmed)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var pub any
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			return nil, fmt.Errorf("a %s block: give public keys (PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE) or a JWK set", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("a %s block: %w", block.Type, err)
		}
		algs, err := keyAlgorithms(pub)
		if err != nil {
			return nil, err
		}
		keys = append(keys, verifyKey{key: pub, algs: algs})
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key and no JWK set in it")
	}
	return keys, nil
}

// keyAlgorithms returns the one algorithm a public key verifies: RS256 for RSA of 2048
// bits or more, ES256 for ECDSA on P-256, EdDSA for Ed25519.
func keyAlgorithms(pub any) ([]string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("an RSA key of %d bits: want 2048 or more", k.N.BitLen())
		}
		return []string{"RS256"}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("an ECDSA key on %s: want P-256 (ES256)", k.Curve.Params().Name)
		}
		return []string{"ES256"}, nil
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	}
	return nil, fmt.Errorf("a %T key: want RSA, ECDSA P-256 or Ed25519", pub)
}

// jwk is one key of a JWK set (RFC 7517), with the members this server reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
}

// parseJWKS returns the signature keys of a JWK set. Keys for encryption (use "enc") are
// skipped; a key with private members, a symmetric key, or an alg its key cannot verify
// is refused.
func parseJWKS(body []byte) ([]verifyKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("a JWK set: %w", err)
	}
	var keys []verifyKey
	for i, k := range set.Keys {
		if k.Use == "enc" {
			continue
		}
		pub, err := k.publicKey()
		if err != nil {
			return nil, fmt.Errorf("JWK %d (kid %q): %w", i, k.Kid, err)
		}
		algs, err := keyAlgorithms(pub)
		if err != nil {
			return nil, fmt.Errorf("JWK %d (kid %q): %w", i, k.Kid, err)
		}
		if k.Alg != "" && !slices.Contains(algs, k.Alg) {
			return nil, fmt.Errorf("JWK %d (kid %q): alg %q, but its key verifies %s", i, k.Kid, k.Alg, strings.Join(algs, ", "))
		}
		keys = append(keys, verifyKey{id: k.Kid, key: pub, algs: algs})
	}
	if len(keys) == 0 {
		return nil, errors.New("a JWK set without a signature key")
	}
	return keys, nil
}

// publicKey builds the public key a JWK describes.
func (k jwk) publicKey() (any, error) {
	if k.D != "" {
		return nil, errors.New("it holds a private key: give the public key alone")
	}
	switch k.Kty {
	case "RSA":
		n, err := base64URLInt(k.N)
		if err != nil {
			return nil, fmt.Errorf("n: %w", err)
		}
		e, err := base64URLInt(k.E)
		if err != nil || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, errors.New("e: not a usable RSA exponent")
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, fmt.Errorf("crv %q: want P-256", k.Crv)
		}
		x, errX := base64.RawURLEncoding.DecodeString(k.X)
		y, errY := base64.RawURLEncoding.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return nil, errors.New("x and y: want 32 bytes each, base64url")
		}
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	case "OKP":
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("want crv Ed25519 and x of 32 bytes, base64url")
		}
		return ed25519.PublicKey(x), nil
	case "oct":
		return nil, errors.New("a symmetric key: HS256 takes its secret from JWT_SECRET alone")
	}
	return nil, fmt.Errorf("kty %q: want RSA, EC or OKP", k.Kty)
}

// base64URLInt decodes a big-endian unsigned integer in base64url without padding.
func base64URLInt(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, errors.New("not base64url")
	}
	return new(big.Int).SetBytes(b), nil
}

// refuseAuth answers a request refused a private topic or a publish: 401 or 403 with a
// one-line reason and the challenge of RFC 6750, section 3. Neither quotes the token.
func refuseAuth(w http.ResponseWriter, e *authError) {
	challenge := `Bearer realm="sse"`
	switch e.failure {
	case authInvalid, authExpired:
		challenge += `, error="invalid_token"`
	case authForbidden:
		challenge += `, error="insufficient_scope"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Cache-Control", "no-store")
	status := e.status()
	http.Error(w, fmt.Sprintf("%d %s: %s", status, strings.ToLower(http.StatusText(status)), e.reason), status)
}
