package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
)

// testSecret is the JWT_SECRET of the tests: HS256 wants 32 bytes or more.
const testSecret = "test-secret-of-at-least-32-bytes-for-hs256"

// authEnv is the environment of a server that verifies HS256 tokens with testSecret.
var authEnv = map[string]string{"JWT_SECRET": testSecret}

// grant returns the claims of a token that may read subscribe and publish to publish,
// valid for ttl from now.
func grant(ttl time.Duration, subscribe, publish []string) *sseClaims {
	now := time.Now()
	return &sseClaims{
		SSE: sseGrant{Subscribe: subscribe, Publish: publish},
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   "user-1",
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
}

// sign returns claims signed with method and key, with the kid header if kid is not empty.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.Claims) string {
	t.Helper()
	token := jwt.NewWithClaims(method, claims)
	if kid != "" {
		token.Header["kid"] = kid
	}
	signed, err := token.SignedString(key)
	if err != nil {
		t.Fatalf("sign a %s token: %v", method.Alg(), err)
	}
	return signed
}

// hs256 returns claims signed with testSecret.
func hs256(t testing.TB, claims jwt.Claims) string {
	t.Helper()
	return sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", claims)
}

// getTopic requests the topic stream at target (a path and query on srv) with method,
// Accept: text/event-stream and header, and returns the status, the answer's headers and
// its body (nothing of a 200 stream is read).
func getTopic(t *testing.T, srv *testServer, method, target string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.url+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && method == http.MethodGet {
		return resp.StatusCode, resp.Header, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// rsaTestKey and the others are made once: an RSA key takes a while under -race.
var (
	testKeysOnce sync.Once
	rsaTestKey   *rsa.PrivateKey
	ecTestKey    *ecdsa.PrivateKey
	edTestKey    ed25519.PrivateKey
)

// testKeys returns an RSA 2048, an ECDSA P-256 and an Ed25519 private key.
func testKeys(t testing.TB) (*rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey) {
	t.Helper()
	testKeysOnce.Do(func() {
		var err error
		if rsaTestKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecTestKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if _, edTestKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
	return rsaTestKey, ecTestKey, edTestKey
}

// publicPEM returns the PKIX PEM block of pub.
func publicPEM(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// writeFile writes body to a file of the test's temporary directory and returns its path.
func writeFile(t testing.TB, name string, body []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// b64 encodes b as base64url without padding, as JWKs write numbers and points.
func b64(b []byte) string {
	return base64.RawURLEncoding.EncodeToString(b)
}

// testJWKS returns a JWK set of the public halves of the test keys, with kids rsa-1, ec-1
// and ed-1.
func testJWKS(t testing.TB) []byte {
	t.Helper()
	rsaKey, ecKey, edKey := testKeys(t)
	ecPoint, err := ecKey.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64(rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(rsaKey.E)).Bytes())},
		{"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64(ecPoint[1:33]), "y": b64(ecPoint[33:])},
		{"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(edKey.Public().(ed25519.PublicKey))},
		{"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"},
	}}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestAuth_RefusesBadTokensWithTheReason(t *testing.T) {
	rsaKey, _, _ := testKeys(t)
	rsaPEM := publicPEM(t, &rsaKey.PublicKey)
	srv := startServerEnv(t, authEnv, "-jwt-key-file", writeFile(t, "rsa.pem", rsaPEM),
		"-jwt-audience", "dashboard", "-jwt-issuer", "https://login.example")
	claims := func(ttl time.Duration, topics ...string) *sseClaims {
		c := grant(ttl, topics, nil)
		c.Audience = jwt.ClaimStrings{"dashboard"}
		c.Issuer = "https://login.example"
		return c
	}
	good := hs256(t, claims(time.Hour, "orders/1"))
	parts := strings.Split(good, ".")
	// A payload that grants orders/2, under the signature of the orders/1 token.
	tampered := parts[0] + "." + b64(mustJSON(t, claims(time.Hour, "orders/2"))) + "." + parts[2]
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims(time.Hour, "orders/1"))
	// The algorithm confusion: HS256 with the server's RSA public key as the secret.
	confused := sign(t, jwt.SigningMethodHS256, rsaPEM, "", claims(time.Hour, "orders/1"))
	rs256 := sign(t, jwt.SigningMethodRS256, rsaKey, "", claims(time.Hour, "orders/1"))
	wrongAud, wrongIss, noExp := claims(time.Hour, "orders/1"), claims(time.Hour, "orders/1"), claims(time.Hour, "orders/1")
	wrongAud.Audience = jwt.ClaimStrings{"another-app"}
	wrongIss.Issuer = "https://evil.example"
	noExp.ExpiresAt = nil
	notYet := claims(time.Hour, "orders/1")
	notYet.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Minute))
	nearlyValid := claims(time.Hour, "orders/1")
	nearlyValid.NotBefore = jwt.NewNumericDate(time.Now().Add(2 * time.Second)) // within the leeway
	bearer := func(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }
	cookie := func(token string) http.Header { return http.Header{"Cookie": {"sse_token=" + token}} }
	orders1 := topicURL("", "orders/1")

	for _, tt := range []struct {
		name   string
		target string
		header http.Header
		want   int
		reason string // in the body, and the metric label below
	}{
		{"no token", orders1, nil, 401, "a token is needed"},
		{"alg none", orders1, bearer(none), 401, "bad signature or algorithm"},
		{"HS256 signed with the RSA public key", orders1, bearer(confused), 401, "bad signature or algorithm"},
		{"tampered payload", topicURL("", "orders/2"), bearer(tampered), 401, "bad signature or algorithm"},
		{"wrong aud", orders1, bearer(hs256(t, wrongAud)), 401, "wrong audience"},
		{"wrong iss", orders1, bearer(hs256(t, wrongIss)), 401, "wrong issuer"},
		{"exp past the leeway", orders1, bearer(hs256(t, claims(-tokenLeeway-5*time.Second, "orders/1"))), 401, "token expired"},
		{"nbf in the future", orders1, bearer(hs256(t, notYet)), 401, "token not valid yet"},
		{"no exp", orders1, bearer(hs256(t, noExp)), 401, "token without exp"},
		{"malformed base64", orders1, bearer("eyJhbGciOiJIUzI1NiJ9.!!!.???"), 401, "malformed token"},
		{"not a JWT", orders1, bearer("opaque"), 401, "malformed token"},
		{"not Bearer", orders1, http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, 401, "Authorization is not Bearer"},
		{"header and query", orders1 + "&access_token=" + good, bearer(good), 401, "a token in both Authorization and access_token"},
		{"two query tokens", orders1 + "&access_token=" + good + "&access_token=" + good, nil, 401, "more than one access_token"},
		{"two Authorization headers, the same token", orders1, http.Header{"Authorization": {"Bearer " + good, "Bearer " + good}}, 401, "more than one Authorization header"},
		{"two Authorization headers, one good", orders1, http.Header{"Authorization": {"Bearer garbage", "Bearer " + good}}, 401, "more than one Authorization header"},
		{"another topic", topicURL("", "orders/2"), bearer(good), 403, "does not allow reading topic orders/2"},
		{"one topic of two not granted", topicURL("", "orders/1", "orders/2"), cookie(good), 403, "does not allow reading topic orders/2"},
		{"HS256 by header", orders1, bearer(good), 200, ""},
		{"RS256 by cookie", orders1, cookie(rs256), 200, ""},
		{"by query", orders1 + "&access_token=" + url.QueryEscape(good), nil, 200, ""},
		{"exp just past, within the leeway", orders1, bearer(hs256(t, claims(-2*time.Second, "orders/1"))), 200, ""},
		{"nbf just ahead, within the leeway", orders1, bearer(hs256(t, nearlyValid)), 200, ""},
		{"a cookie from another origin", orders1, http.Header{"Cookie": {"sse_token=" + good}, "Origin": {"https://evil.example"}}, 403, "a cookie counts only from the origins in -allowed-origins"},
		{"a header from another origin", orders1, http.Header{"Authorization": {"Bearer " + good}, "Origin": {"https://evil.example"}}, 200, ""},
		{"the header wins over the cookie", orders1, http.Header{"Authorization": {"Bearer " + good}, "Cookie": {"sse_token=garbage"}}, 200, ""},
	} {
		status, header, body := getTopic(t, srv, http.MethodGet, tt.target, tt.header)
		if status != tt.want || !strings.Contains(body, tt.reason) {
			t.Errorf("%s: GET = %d %q, want %d with %q", tt.name, status, body, tt.want, tt.reason)
		}
		if status == 200 {
			continue
		}
		for _, token := range []string{good, none, confused, tampered, rs256} {
			if strings.Contains(body, token) || strings.Contains(fmt.Sprint(header), token) {
				t.Errorf("%s: the answer quotes a token: %q %v", tt.name, body, header)
			}
		}
		if !strings.HasPrefix(header.Get("WWW-Authenticate"), `Bearer realm="sse"`) {
			t.Errorf("%s: WWW-Authenticate = %q, want a Bearer challenge", tt.name, header.Get("WWW-Authenticate"))
		}
		if headStatus, _, _ := getTopic(t, srv, http.MethodHead, tt.target, tt.header); headStatus != status {
			t.Errorf("%s: HEAD = %d, want %d as GET answered", tt.name, headStatus, status)
		}
	}
	m := scrape(t, srv.adminURL)
	// Each refusal twice: GET and HEAD.
	for reason, want := range map[string]float64{"missing": 2, "invalid": 2 * 14, "expired": 2, "forbidden": 2 * 3} {
		if got := m[`sse_auth_failures_total{reason="`+reason+`"}`]; got != want {
			t.Errorf("sse_auth_failures_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	// Only the accepted GETs opened a stream; no refusal took a place.
	if got := m["sse_streams_opened_total"]; got != 7 {
		t.Errorf("sse_streams_opened_total = %v, want 7: the accepted GETs alone", got)
	}
}

// mustJSON returns v as JSON.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAuth_TooLongTokenIsRefused(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 100<<10)
	// Under the default -max-header-bytes, the request line or the header is too long.
	srv := startServerEnv(t, authEnv)
	for name, tt := range map[string]struct {
		target string
		header http.Header
	}{
		"header": {topicURL("", "orders/1"), http.Header{"Authorization": {"Bearer " + long}}},
		"query":  {topicURL("", "orders/1") + "&access_token=" + long, nil},
	} {
		if status, _, _ := getTopic(t, srv, http.MethodGet, tt.target, tt.header); status != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("a 100 KB token in the %s: %d, want 431", name, status)
		}
	}
	// Under a larger limit, the token itself is refused before it is parsed.
	big := startServerEnv(t, authEnv, "-max-header-bytes", "262144")
	status, _, body := getTopic(t, big, http.MethodGet, topicURL("", "orders/1"), http.Header{"Authorization": {"Bearer " + long}})
	if status != http.StatusUnauthorized || !strings.Contains(body, "over 8192 bytes") {
		t.Errorf("a 100 KB token under a 256 KiB header limit: %d %q, want 401 saying it is over 8192 bytes", status, body)
	}
	if resp, _ := big.get(t, http.MethodGet, "/healthz", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("after the long tokens, /healthz = %d, want 200", resp.StatusCode)
	}
}

func TestAuth_PublicTopicsAndTheRandomStreamNeedNoToken(t *testing.T) {
	t.Parallel()
	srv := startServerEnv(t, authEnv, "-public-topics", "news, prices/*")
	for _, tt := range []struct {
		target string
		want   int
	}{
		{"/sse", 200},
		{topicURL("", "news"), 200},
		{topicURL("", "prices/eur", "news"), 200},
		{topicURL("", "prices/eur/usd"), 401},
		{topicURL("", "news", "orders/1"), 401},
	} {
		if status, _, body := getTopic(t, srv, http.MethodGet, tt.target, nil); status != tt.want {
			t.Errorf("GET %s without a token = %d %q, want %d", tt.target, status, body, tt.want)
		}
	}
	// Without a key, every topic is public.
	open := startServer(t)
	if status, _, body := getTopic(t, open, http.MethodGet, topicURL("", "orders/1"), nil); status != 200 {
		t.Errorf("GET a topic of a server without a key = %d %q, want 200", status, body)
	}
}

func TestAuth_KeysFromPEMAndJWKS(t *testing.T) {
	t.Parallel()
	rsaKey, ecKey, edKey := testKeys(t)
	pemFile := slices.Concat(publicPEM(t, &rsaKey.PublicKey), publicPEM(t, &ecKey.PublicKey), publicPEM(t, edKey.Public()))
	otherEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	claims := grant(time.Hour, []string{"orders/1"}, nil)
	for _, file := range []struct {
		name string
		body []byte
	}{{"keys.pem", pemFile}, {"jwks.json", testJWKS(t)}} {
		srv := startServer(t, "-jwt-key-file", writeFile(t, file.name, file.body))
		for _, tt := range []struct {
			name  string
			token string
			want  int
		}{
			{"RS256", sign(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", claims), 200},
			{"ES256", sign(t, jwt.SigningMethodES256, ecKey, "ec-1", claims), 200},
			{"EdDSA", sign(t, jwt.SigningMethodEdDSA, edKey, "ed-1", claims), 200},
			{"ES256 without a kid", sign(t, jwt.SigningMethodES256, ecKey, "", claims), 200},
			{"ES256 by another key", sign(t, jwt.SigningMethodES256, otherEC, "ec-1", claims), 401},
			{"HS256 with no secret set", hs256(t, claims), 401},
			{"PS256, not in the list", sign(t, jwt.SigningMethodPS256, rsaKey, "rsa-1", claims), 401},
			{"HS256 keyed with the RSA PEM", sign(t, jwt.SigningMethodHS256, publicPEM(t, &rsaKey.PublicKey), "rsa-1", claims), 401},
		} {
			status, _, body := getTopic(t, srv, http.MethodGet, topicURL("", "orders/1"), http.Header{"Authorization": {"Bearer " + tt.token}})
			if status != tt.want {
				t.Errorf("%s, %s: GET = %d %q, want %d", file.name, tt.name, status, body, tt.want)
			}
		}
		if file.name == "jwks.json" {
			// A kid names one key: the EC token under the Ed25519 key's kid fails.
			token := sign(t, jwt.SigningMethodES256, ecKey, "ed-1", claims)
			if status, _, _ := getTopic(t, srv, http.MethodGet, topicURL("", "orders/1"), http.Header{"Authorization": {"Bearer " + token}}); status != 401 {
				t.Errorf("jwks.json: an ES256 token under kid ed-1 = %d, want 401", status)
			}
		}
	}
}

func TestAuth_KeyFilesThatCannotWorkAreRefused(t *testing.T) {
	t.Parallel()
	rsaKey, ecKey, _ := testKeys(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	privateDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	for _, tt := range []struct {
		name, body, want string
	}{
		{"a private key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privateDER})), "give public keys"},
		{"RSA 1024", string(publicPEM(t, &small.PublicKey)), "want 2048 or more"},
		{"P-384", string(publicPEM(t, &p384.PublicKey)), "want P-256"},
		{"nothing", "hello", "no PEM public key"},
		{"a JWK with d", `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}`, "private key"},
		{"a symmetric JWK", `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`, "JWT_SECRET alone"},
		{"an alg the key cannot verify", `{"keys":[{"kty":"RSA","alg":"HS256","n":"` + b64(rsaKey.N.Bytes()) + `","e":"AQAB"}]}`, `alg "HS256"`},
		{"no signature key", `{"keys":[]}`, "without a signature key"},
	} {
		_, err := parseConfig([]string{"-jwt-key-file", writeFile(t, "key", []byte(tt.body))}, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "-jwt-key-file") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: parseConfig = %v, want an error naming -jwt-key-file and %q", tt.name, err, tt.want)
		}
	}
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"short secret", nil, map[string]string{"JWT_SECRET": "short"}, "JWT_SECRET"},
		{"bad pattern", []string{"-public-topics", "news,pri*"}, nil, "-public-topics"},
		{"** not last", []string{"-public-topics", "**/x"}, nil, "-public-topics"},
		{"bad origin", []string{"-allowed-origins", "https://a.example/path"}, nil, "-allowed-origins"},
		{"bad cookie", []string{"-jwt-cookie", "a b"}, nil, "-jwt-cookie"},
		{"public admin, no credential", []string{"-admin-addr", ":3001"}, nil, "-publish-token"},
	} {
		_, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: parseConfig = %v, want an error naming %s", tt.name, err, tt.want)
		}
	}
	// A JWT key is a publishers' credential too: a public admin address may go without a token.
	if _, err := parseConfig([]string{"-admin-addr", ":3001"}, func(k string) string { return authEnv[k] }, io.Discard); err != nil {
		t.Errorf("a public admin address with JWT_SECRET: %v, want it accepted", err)
	}
}

func TestTopicPattern_Matches(t *testing.T) {
	for _, tt := range []struct {
		pattern string
		match   []string
		miss    []string
	}{
		{"orders/42", []string{"orders/42"}, []string{"orders/4", "orders/420", "orders/42/items", "orders"}},
		{"orders/*", []string{"orders/42", "orders/a.b"}, []string{"orders", "orders/", "orders/42/items", "order/42"}},
		{"orders/**", []string{"orders/42", "orders/42/items", "orders/a/b/c"}, []string{"orders", "orders/", "ordersx/1"}},
		{"*/public", []string{"news/public"}, []string{"public", "a/b/public", "/public"}},
		{"*", []string{"news", "a.b-c"}, []string{"a/b", "/"}},
		{"**", []string{"news", "a/b/c"}, nil},
		{"a/*/c", []string{"a/b/c"}, []string{"a/c", "a/b/d/c", "a//c"}},
		{"pri*", nil, []string{"prices", "pri"}},
		{"**/x", nil, []string{"a/x", "x"}},
	} {
		for _, topic := range tt.match {
			if !matchTopic(tt.pattern, topic) {
				t.Errorf("matchTopic(%q, %q) = false, want true", tt.pattern, topic)
			}
		}
		for _, topic := range tt.miss {
			if matchTopic(tt.pattern, topic) {
				t.Errorf("matchTopic(%q, %q) = true, want false", tt.pattern, topic)
			}
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { matchTopic("orders/*/items/**", "orders/42/items/7/x") }); allocs != 0 {
		t.Errorf("matchTopic allocates %v times, want 0", allocs)
	}
}

// referenceMatch is matchTopic said the slow way, for the fuzz target: split both at
// slashes and compare segment by segment.
func referenceMatch(pattern, topic string) bool {
	if checkPattern(pattern) != nil {
		return pattern == topic && checkTopic(topic) == nil && !strings.Contains(pattern, "*")
	}
	ps, ts := strings.Split(pattern, "/"), strings.Split(topic, "/")
	for i, p := range ps {
		if p == "**" && i == len(ps)-1 {
			return len(ts) > i && strings.Join(ts[i:], "/") != ""
		}
		if i >= len(ts) || (p == "*" && ts[i] == "") || (p != "*" && p != ts[i]) {
			return false
		}
	}
	return len(ps) == len(ts)
}

func FuzzMatchTopic(f *testing.F) {
	for _, seed := range [][2]string{
		{"orders/*", "orders/42"}, {"orders/**", "orders/1/2"}, {"**", "a"}, {"*/x", "/x"},
		{"a/*/c", "a//c"}, {"a/**", "a/"}, {"pri*", "pri*"}, {"**/x", "a/x"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		if checkTopic(topic) != nil {
			return // the hub refuses such a topic before any pattern sees it
		}
		got := matchTopic(pattern, topic)
		if want := referenceMatch(pattern, topic); got != want {
			t.Fatalf("matchTopic(%q, %q) = %t, the segment-by-segment reading says %t", pattern, topic, got, want)
		}
		if checkPattern(topic) == nil && !matchTopic(topic, topic) {
			t.Fatalf("the topic %q as a pattern does not match itself", topic)
		}
		if !matchTopic("**", topic) {
			t.Fatalf(`"**" does not match %q`, topic)
		}
	})
}

func FuzzTokenFrom(f *testing.F) {
	f.Add("Bearer abc", "sse_token=def", "access_token=ghi")
	f.Add("", "sse_token=def", "access_token=ghi&access_token=x")
	f.Add("bearer  abc ", "", "")
	f.Add("Basic x", "a=b; sse_token=", "topic=a&access_token=%zz")
	f.Add("Bearer abc\nBearer abc", "", "")
	f.Add("Bearer abc\n", "sse_token=def", "")
	f.Fuzz(func(t *testing.T, authorization, cookie, query string) {
		r := &http.Request{Header: http.Header{}, URL: &url.URL{Path: "/sse", RawQuery: query}}
		if authorization != "" {
			// Each line is one Authorization header, as a request may carry several.
			for _, line := range strings.Split(authorization, "\n") {
				r.Header.Add("Authorization", line)
			}
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		token, _, err := tokenFrom(r, "sse_token")
		if err != nil {
			quoted := func(input string) bool { return len(input) > 100 && strings.Contains(err.reason, input) }
			if token != "" || err.reason == "" || quoted(authorization) || quoted(cookie) || quoted(query) {
				t.Fatalf("tokenFrom(%q, %q, %q) = %q, %+v: want no token and a reason that quotes none", authorization, cookie, query, token, err)
			}
			return
		}
		if token == "" || len(token) > maxTokenLength {
			t.Fatalf("tokenFrom(%q, %q, %q) = %q, want a token of 1 to %d bytes", authorization, cookie, query, token, maxTokenLength)
		}
		if len(r.Header.Values("Authorization")) > 1 {
			t.Fatalf("tokenFrom(%q, %q, %q) = %q, want two Authorization headers refused", authorization, cookie, query, token)
		}
		inQuery := r.URL.Query().Has(accessTokenParam)
		if authorization != "" && inQuery {
			t.Fatalf("tokenFrom(%q, %q, %q) = %q, want the header and the query refused together", authorization, cookie, query, token)
		}
		if !strings.Contains(authorization, token) && !strings.Contains(cookie, token) && r.URL.Query().Get(accessTokenParam) != token {
			t.Fatalf("tokenFrom(%q, %q, %q) = %q, which none of them carries", authorization, cookie, query, token)
		}
	})
}

func TestAuth_CORSEchoesOnlyAllowedOrigins(t *testing.T) {
	t.Parallel()
	const allowed = "https://app.example"
	srv := startServerEnv(t, authEnv, "-allowed-origins", allowed+",http://127.0.0.1:8081", "-public-topics", "news")
	token := hs256(t, grant(time.Hour, []string{"orders/1"}, nil))
	for _, tt := range []struct {
		name, method, target, origin string
		header                       http.Header
		wantOrigin                   string
		wantCredentials              bool
	}{
		{"stream, allowed origin", http.MethodGet, topicURL("", "orders/1"), allowed, http.Header{"Cookie": {"sse_token=" + token}}, allowed, true},
		{"HEAD, allowed origin", http.MethodHead, topicURL("", "orders/1"), allowed, http.Header{"Cookie": {"sse_token=" + token}}, allowed, true},
		{"refusal, allowed origin", http.MethodGet, topicURL("", "orders/2"), allowed, http.Header{"Cookie": {"sse_token=" + token}}, allowed, true},
		{"preflight, allowed origin", http.MethodOptions, "/sse", allowed, http.Header{"Access-Control-Request-Method": {"GET"}}, allowed, true},
		{"stream, other origin", http.MethodGet, topicURL("", "news"), "https://evil.example", nil, "*", false},
		{"preflight, other origin", http.MethodOptions, "/sse", "https://evil.example", http.Header{"Access-Control-Request-Method": {"GET"}}, "*", false},
		{"random stream, no origin", http.MethodGet, "/sse", "", nil, "*", false},
		{"an origin that differs by case", http.MethodGet, "/sse", "https://APP.example", nil, "*", false},
	} {
		header := http.Header{}
		for k, v := range tt.header {
			header[k] = v
		}
		if tt.origin != "" {
			header.Set("Origin", tt.origin)
		}
		_, got, _ := getTopic(t, srv, tt.method, tt.target, header)
		credentials := got.Get("Access-Control-Allow-Credentials") == "true"
		if got.Get("Access-Control-Allow-Origin") != tt.wantOrigin || credentials != tt.wantCredentials || !slices.Contains(got.Values("Vary"), "Origin") {
			t.Errorf("%s: Allow-Origin %q, Allow-Credentials %q, Vary %q; want %q, credentials %t, Vary: Origin",
				tt.name, got.Get("Access-Control-Allow-Origin"), got.Get("Access-Control-Allow-Credentials"), got.Values("Vary"), tt.wantOrigin, tt.wantCredentials)
		}
		if tt.method == http.MethodOptions && !strings.Contains(got.Get("Access-Control-Allow-Headers"), "Authorization") {
			t.Errorf("%s: Access-Control-Allow-Headers = %q, want Authorization in it", tt.name, got.Get("Access-Control-Allow-Headers"))
		}
	}
	// Without -allowed-origins, every answer is "*" and varies by nothing.
	open := startServer(t)
	_, got, _ := getTopic(t, open, http.MethodGet, "/sse", http.Header{"Origin": {allowed}})
	if got.Get("Access-Control-Allow-Origin") != "*" || got.Get("Access-Control-Allow-Credentials") != "" || got.Get("Vary") != "" {
		t.Errorf("no -allowed-origins: %v, want Access-Control-Allow-Origin * alone", got)
	}
}

func TestAuth_PublishersNeedATokenOrAJWTThatCoversTheTopic(t *testing.T) {
	t.Parallel()
	srv := startServerEnv(t, authEnv, "-publish-token", "pub-s3cret")
	jwtFor := func(topics ...string) string { return hs256(t, grant(time.Hour, nil, topics)) }
	for _, tt := range []struct {
		name, token, topic string
		want               int
	}{
		{"nothing", "", "orders/1", 401},
		{"the -publish-token", "pub-s3cret", "anything/at/all", 200},
		{"a JWT that covers the topic", jwtFor("orders/*"), "orders/1", 200},
		{"a JWT that does not", jwtFor("orders/*"), "prices/eur", 403},
		{"a JWT with only a subscribe claim", hs256(t, grant(time.Hour, []string{"orders/1"}, nil)), "orders/1", 403},
		{"an expired JWT", hs256(t, grant(-time.Minute, nil, []string{"orders/1"})), "orders/1", 401},
		{"a wrong token", "pub-s3cre", "orders/1", 401},
	} {
		status, answer := publish(t, srv.adminURL, tt.token, mustJSON(t, map[string]any{"topic": tt.topic, "data": 1}))
		if status != tt.want || (tt.token != "" && strings.Contains(answer, tt.token)) {
			t.Errorf("%s: POST /publish = %d %q, want %d and no token in the answer", tt.name, status, answer, tt.want)
		}
	}
	if got := metric(t, srv.adminURL, "sse_hub_published_total"); got != 2 {
		t.Errorf("sse_hub_published_total = %v, want 2", got)
	}
	if got := metric(t, srv.adminURL, `sse_auth_failures_total{reason="forbidden"}`); got != 2 {
		t.Errorf(`sse_auth_failures_total{reason="forbidden"} = %v, want 2`, got)
	}

	// With a JWT key, a loopback admin address needs a credential too.
	jwtOnly := startServerEnv(t, authEnv)
	if status, _ := publish(t, jwtOnly.adminURL, "", []byte(`{"topic":"a","data":1}`)); status != 401 {
		t.Errorf("JWT key, no -publish-token, no credential: POST /publish = %d, want 401", status)
	}
	if status, answer := publish(t, jwtOnly.adminURL, jwtFor("a"), []byte(`{"topic":"a","data":1}`)); status != 200 {
		t.Errorf("JWT key, no -publish-token, a JWT for the topic: POST /publish = %d %q, want 200", status, answer)
	}
}

// publishAs publishes data to topic with the bearer credential and returns the id the event
// got, failing the test unless the answer is 200 with an id.
func publishAs(t testing.TB, adminURL, bearer, topic string, data any) string {
	t.Helper()
	status, answer := publish(t, adminURL, bearer, mustJSON(t, map[string]any{"topic": topic, "data": data}))
	var got publishAnswer
	if status != http.StatusOK || json.Unmarshal([]byte(answer), &got) != nil || got.ID == "" {
		t.Fatalf("POST /publish to %s = %d %q, want 200 with an id", topic, status, answer)
	}
	return got.ID
}

func TestAuth_ExpiredTokenEndsTheStreamAndAFreshOneResumesWithoutLoss(t *testing.T) {
	skipShort(t, "a token that expires mid-stream (7 s)")
	srv := startServerEnv(t, authEnv, "-publish-token", "pub", "-retry", "200ms")
	ttl := 2 * time.Second
	exp := time.Now().Add(ttl).Truncate(time.Second) // a NumericDate holds whole seconds
	first := grant(ttl, []string{"orders/1"}, nil)
	first.ExpiresAt = jwt.NewNumericDate(exp)
	header := http.Header{"Accept": {"text/event-stream"}, "Authorization": {"Bearer " + hs256(t, first)}}
	s := openStreamAt(t, topicURL(srv.url, "orders/1"), header)
	s.next(t) // the opening frame

	// Publish all along, from before the expiry until after the reconnect.
	var mu sync.Mutex
	var published []string
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			id, err := tryPublish(srv.adminURL, "pub", "orders/1", i)
			if err != nil {
				t.Errorf("publish while the stream expires: %v", err)
				return
			}
			mu.Lock()
			published = append(published, id)
			mu.Unlock()
		}
	}()
	var got []string
	var expired frame
	for {
		f := s.next(t)
		if f.event == "auth-expired" {
			expired = f
			break
		}
		if f.isEvent {
			got = append(got, f.id)
		}
	}
	ended := time.Now()
	if end := exp.Add(tokenLeeway); ended.Before(end) || ended.After(end.Add(2*time.Second)) {
		t.Errorf("auth-expired came at exp%+v, want within 2s after exp plus the %s leeway", ended.Sub(exp), tokenLeeway)
	}
	if expired.data != authExpiredData || expired.id != "" {
		t.Errorf("auth-expired = %+v, want data %s and no id", expired, authExpiredData)
	}
	if err := s.readToEnd(); err != nil {
		t.Errorf("after auth-expired the stream ended with %v, want a clean end", err)
	}
	if len(got) == 0 {
		t.Fatal("no event before the expiry: the test tested nothing")
	}
	// The same token is refused now; a fresh one resumes after the last id received.
	if status, _, _ := getTopic(t, srv, http.MethodGet, topicURL("", "orders/1"), http.Header{"Authorization": header["Authorization"]}); status != 401 {
		t.Errorf("the expired token again = %d, want 401", status)
	}
	header.Set("Authorization", "Bearer "+hs256(t, grant(time.Hour, []string{"orders/1"}, nil)))
	header.Set("Last-Event-ID", got[len(got)-1])
	resumed := openStreamAt(t, topicURL(srv.url, "orders/1"), header)
	resumed.next(t)
	time.Sleep(300 * time.Millisecond) // a few more events after the reconnect
	close(stop)
	<-done
	mu.Lock()
	want := slices.Clone(published)
	mu.Unlock()
	for len(got) < len(want) {
		if f := resumed.next(t); f.isEvent {
			got = append(got, f.id)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("received ids\n%v\nwant every published id exactly once, in order\n%v", got, want)
	}
	if n := metric(t, srv.adminURL, `sse_streams_ended_total{reason="auth_expired"}`); n != 1 {
		t.Errorf(`sse_streams_ended_total{reason="auth_expired"} = %v, want 1`, n)
	}
}

func TestAuth_NoTokenInLogsOrMetrics(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"text", "json"} {
		srv := startServerEnv(t, authEnv, "-v", "-log-format", format, "-publish-token", "pub-token-never-logged")
		valid := hs256(t, grant(time.Hour, []string{"orders/1"}, []string{"orders/1"}))
		expired := hs256(t, grant(-time.Hour, []string{"orders/1"}, nil))
		garbage := "not-a-jwt-but-a-secret-all-the-same"
		tokens := []string{valid, expired, garbage, testSecret, "pub-token-never-logged"}
		for _, token := range []string{valid, expired, garbage} {
			getTopic(t, srv, http.MethodGet, topicURL("", "orders/1"), http.Header{"Authorization": {"Bearer " + token}})
			getTopic(t, srv, http.MethodGet, topicURL("", "orders/1"), http.Header{"Cookie": {"sse_token=" + token}})
			getTopic(t, srv, http.MethodGet, topicURL("", "orders/2")+"&access_token="+url.QueryEscape(token), nil)
			getTopic(t, srv, http.MethodHead, topicURL("", "orders/2")+"&access_token="+url.QueryEscape(token), nil)
			publish(t, srv.adminURL, token, []byte(`{"topic":"orders/1","data":1}`))
		}
		publishAs(t, srv.adminURL, "pub-token-never-logged", "orders/1", 1)
		// A stream that opened with a token, and its end, are logged with -v.
		s := openStreamAt(t, topicURL(srv.url, "orders/1")+"&access_token="+url.QueryEscape(valid), http.Header{"Accept": {"text/event-stream"}})
		s.next(t)
		s.close()
		eventually(t, 5*time.Second, "the stream's end logged", func() bool { return srv.logs.count("client disconnected") >= 1 })
		metrics := scrapeText(t, srv.adminURL)
		if err := srv.stop(t, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		logs := srv.logs.String()
		if !strings.Contains(logs, "client subscribed") {
			t.Fatalf("%s logs hold no subscribe line: -v did not log, so the test tested nothing:\n%s", format, logs)
		}
		for _, token := range tokens {
			for _, part := range append(strings.Split(token, "."), token) {
				if len(part) < 16 {
					continue // the header {"alg":"HS256"...} is the same in every token
				}
				if strings.Contains(logs, part) && !strings.HasPrefix(token, part) {
					t.Errorf("%s logs hold a token's part %q", format, part)
				}
			}
			if strings.Contains(logs, token) || strings.Contains(metrics, token) {
				t.Errorf("%s logs or /metrics hold a token %q", format, token)
			}
		}
	}
}

// tryPublish publishes data to topic with the bearer credential and returns the id the
// event got, or why not: for goroutines, which must not end the test.
func tryPublish(adminURL, bearer, topic string, data any) (string, error) {
	body, _ := json.Marshal(map[string]any{"topic": topic, "data": data})
	req, err := http.NewRequest(http.MethodPost, adminURL+"/publish", strings.NewReader(string(body)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var got publishAnswer
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST /publish = %d (%v)", resp.StatusCode, err)
	}
	return got.ID, nil
}

// scrapeText returns the /metrics page of the admin listener at adminURL.
func scrapeText(t *testing.T, adminURL string) string {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func BenchmarkVerifyToken(b *testing.B) {
	_, ecKey, _ := testKeys(b)
	claims := grant(time.Hour, []string{"orders/*"}, nil)
	for _, tt := range []struct {
		name  string
		key   verifyKey
		token string
	}{
		{"HS256", verifyKey{key: []byte(testSecret), algs: []string{"HS256"}}, hs256(b, claims)},
		{"ES256", verifyKey{key: &ecKey.PublicKey, algs: []string{"ES256"}}, sign(b, jwt.SigningMethodES256, ecKey, "", claims)},
	} {
		b.Run(tt.name, func(b *testing.B) {
			a := newAuthorizer(authConfig{keys: []verifyKey{tt.key}, cookie: "sse_token"}, newMetrics(func() float64 { return 0 }, time.Second).registry)
			r, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/sse?topic=orders/1", nil)
			r.Header.Set("Authorization", "Bearer "+tt.token)
			topics := []string{"orders/1"}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := a.authorizeSubscribe(r, topics); err != nil {
					b.Fatal(err.reason)
				}
			}
		})
	}
}

// corsRefused matches the console errors Chromium writes when CORS refuses a response.
func corsRefused(m chromedp.ConsoleMessage) bool {
	return m.Type == chromedp.ConsoleError && (strings.Contains(m.Text, "CORS policy") || strings.Contains(m.Text, "net::ERR_FAILED"))
}

func TestPage_PrivateTopicNotAuthorizedStopsAndSaysSo(t *testing.T) {
	srv := startServerEnv(t, authEnv, "-publish-token", "pub")
	token := hs256(t, grant(time.Hour, []string{"orders/1"}, nil))
	b := newBrowser(t)
	b.excuse("a topic the token does not grant answers 403", failedWith(http.StatusForbidden))
	b.excuse("a topic without a token answers 401", failedWith(http.StatusUnauthorized))

	b.navigate(t, srv.url+"/?topic=orders/2&access_token="+token)
	d := b.waitForDashboard(t, "the refusal shown", `d.state === "not authorized"`)
	if d.SrcNote != "Not authorized for this topic" || !d.SrcProblem || d.StateNote != "a new token is needed" || !strings.Contains(d.Announced, "not authorized") {
		t.Errorf("403: #src-note %q (problem %t), state note %q, live region %q; want the refusal said as a problem, and announced",
			d.SrcNote, d.SrcProblem, d.StateNote, d.Announced)
	}
	// The EventSource's GET and the page's HEAD, and no retry after them.
	if n := metric(t, srv.adminURL, `sse_auth_failures_total{reason="forbidden"}`); n != 2 {
		t.Errorf(`sse_auth_failures_total{reason="forbidden"} = %v once the page shows the refusal, want 2: the stream and the HEAD that asked why`, n)
	}
	// What the refusal writes keeps to one line, as in every other state, and is readable.
	// (The stream's URL is cut with an ellipsis at 320 px in every state of a topic stream.)
	for _, width := range []int64{320, 1280} {
		if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(width, 700, chromedp.EmulateMobile)); err != nil {
			t.Fatal(err)
		}
		b.navigate(t, srv.url+"/?topic=orders/2&access_token="+token)
		shown := b.waitForDashboard(t, "the refusal shown", `d.state === "not authorized"`)
		for _, l := range evaluate[cardLayout](t, b, cardLayoutJS).Lines {
			if l.Text == shown.Src {
				continue
			}
			t.Errorf("not authorized at %d px: %q takes %d lines and %d of %d px, want one line that fits", width, l.Text, l.Lines, l.ScrollWidth, l.ClientWidth)
		}
		if width == 1280 {
			b.checkContrast(t, "not authorized at 1280 px")
		}
	}

	b.navigate(t, srv.url+"/?topic=orders/1")
	d = b.waitForDashboard(t, "the refusal without a token shown", `d.state === "not authorized"`)
	if d.SrcNote != "Not authorized: no valid token" {
		t.Errorf("401: #src-note %q, want Not authorized: no valid token", d.SrcNote)
	}

	b.navigate(t, srv.url+"/?topic=orders/1&access_token="+token)
	b.waitForDashboard(t, "the granted topic open", `d.state === "open"`)
	eventually(t, 5*time.Second, "the page subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })
	publishAs(t, srv.adminURL, "pub", "orders/1", map[string]int{"User": 42})
	d = b.waitForDashboard(t, "the granted topic's event", `d.value === "42"`)
	if strings.Contains(d.Src, token) || strings.Contains(d.TryCurl, token) {
		t.Errorf("the page shows its token: #src %q, try-it %q", d.Src, d.TryCurl)
	}
}

// crossOriginPage is the page of origin A in the credentialed tests: it logs in at the
// login origin (which sets an HttpOnly cookie for the host), then reads the stream with
// withCredentials; on auth-expired it logs in again, so that the browser's own reconnect,
// with its Last-Event-ID, carries the fresh cookie.
const crossOriginPage = `<!doctype html>
<meta charset="utf-8">
<title>origin A</title>
<link rel="icon" href="data:,">
<script>
window.ids = [];
window.opens = 0;
window.errors = 0;
window.expired = 0;
window.closed = false;
window.otherOpens = 0;
window.otherClosed = false;
const login = (ttl) => fetch(LOGIN + "/login?ttl=" + ttl, { credentials: "include" });
login(TTL).then(() => {
	const es = new EventSource(STREAM, { withCredentials: true });
	es.onopen = () => { window.opens++; };
	es.onmessage = (e) => { window.ids.push(e.lastEventId); };
	es.onerror = () => { window.errors++; window.closed = es.readyState === EventSource.CLOSED; };
	es.addEventListener("auth-expired", () => { window.expired++; login(3600); });
	// A topic the cookie's token does not grant, beside the one it does.
	const other = new EventSource(OTHER, { withCredentials: true });
	other.onopen = () => { window.otherOpens++; };
	other.onerror = () => { window.otherClosed = other.readyState === EventSource.CLOSED; };
}, () => { window.errors++; });
</script>`

// crossOriginState is what crossOriginPage has seen.
type crossOriginState struct {
	IDs     []string `json:"ids"`
	Opens   int      `json:"opens"`
	Errors  int      `json:"errors"`
	Expired int      `json:"expired"`
	Closed  bool     `json:"closed"`
}

// readCrossOrigin returns what crossOriginPage has seen.
func readCrossOrigin(t *testing.T, b *browser) crossOriginState {
	t.Helper()
	return evaluate[crossOriginState](t, b, `({ids: window.ids, opens: window.opens, errors: window.errors, expired: window.expired, closed: window.closed})`)
}

func TestBrowser_PrivateTopicWithCookieAcrossOrigins(t *testing.T) {
	// Origin A serves the page; the login origin sets the cookie; the service is a third
	// origin. Cookies belong to a host, not a port, so the cookie the login origin sets on
	// 127.0.0.1 travels to the service on 127.0.0.1 too: the three are cross-origin and
	// same-site, as an app at app.example with its stream at sse.app.example would be.
	var page atomic.Pointer[string]
	pageMux := http.NewServeMux()
	pageMux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { serveHTML(*page.Load())(w, r) })
	origin := startOtherOrigin(t, pageMux)
	notAllowed := startOtherOrigin(t, pageMux)

	loginMux := http.NewServeMux()
	loginMux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		ttl, err := strconv.Atoi(r.URL.Query().Get("ttl"))
		if err != nil {
			http.Error(w, "ttl", http.StatusBadRequest)
			return
		}
		claims := grant(time.Duration(ttl)*time.Second, []string{"orders/1"}, nil)
		token, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
		http.SetCookie(w, &http.Cookie{Name: "sse_token", Value: token, Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
		w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Vary", "Origin")
		fmt.Fprintln(w, "logged in")
	})
	login := startOtherOrigin(t, loginMux)
	srv := startServerEnv(t, authEnv, "-allowed-origins", origin, "-publish-token", "pub", "-retry", "1s", "-retry-spread", "0")
	html := strings.NewReplacer("LOGIN", jsString(t, login), "STREAM", jsString(t, topicURL(srv.url, "orders/1")),
		"OTHER", jsString(t, topicURL(srv.url, "orders/2")), "TTL", "2").Replace(crossOriginPage)
	page.Store(&html)

	b := newBrowser(t)
	b.excuse("the page of an origin not in -allowed-origins is refused by CORS", corsRefused)
	// The server refuses the cookie of a page from an origin not in -allowed-origins (and
	// the browser would hide a stream from it anyway): the page gets nothing.
	b.excuse("the page of an origin not in -allowed-origins gets 403", failedWith(http.StatusForbidden))
	b.navigate(t, notAllowed+"/")
	b.waitFor(t, pageWait, "the not-allowed page's stream refused", `window.errors >= 1`)
	if got := readCrossOrigin(t, b); len(got.IDs) != 0 || got.Opens != 0 {
		t.Errorf("the page of a not-allowed origin saw %d opens and ids %v, want none", got.Opens, got.IDs)
	}
	eventually(t, 5*time.Second, "the not-allowed page refused", func() bool {
		return metric(t, srv.adminURL, `sse_auth_failures_total{reason="forbidden"}`) >= 1
	})
	if n := metric(t, srv.adminURL, "sse_streams_opened_total"); n != 0 {
		t.Errorf("sse_streams_opened_total = %v after the not-allowed page, want 0: refused before admission", n)
	}

	forbiddenBefore := metric(t, srv.adminURL, `sse_auth_failures_total{reason="forbidden"}`)
	b.navigate(t, origin+"/")
	b.waitFor(t, pageWait, "the allowed page's stream open", `window.opens === 1 || window.closed`)
	if got := readCrossOrigin(t, b); got.Closed {
		t.Fatalf("the allowed page's stream closed: %+v; the server log:\n%s", got, srv.logs.String())
	}
	// The same cookie does not open orders/2: 403, and the browser gives up on that one alone.
	b.waitFor(t, pageWait, "the orders/2 stream refused", `window.otherClosed === true`)
	if opens := evaluate[int](t, b, `window.otherOpens`); opens != 0 {
		t.Errorf("the orders/2 stream opened %d times, want 0: the token grants orders/1 alone", opens)
	}
	if n := metric(t, srv.adminURL, `sse_auth_failures_total{reason="forbidden"}`) - forbiddenBefore; n != 1 {
		t.Errorf("sse_auth_failures_total{reason=\"forbidden\"} grew by %v for the orders/2 stream, want 1", n)
	}
	if cookie := evaluate[string](t, b, `document.cookie`); strings.Contains(cookie, "sse_token") {
		t.Errorf("document.cookie = %q, want the HttpOnly cookie hidden from scripts", cookie)
	}
	eventually(t, 5*time.Second, "the page subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })

	// Publish until the token has expired, the page has logged in again and its EventSource
	// has come back, then a few more: the page must have every id, once, in order.
	var published []string
	deadline := time.Now().Add(30 * time.Second)
	for more := 5; more > 0 && time.Now().Before(deadline); {
		published = append(published, publishAs(t, srv.adminURL, "pub", "orders/1", len(published)))
		time.Sleep(100 * time.Millisecond)
		if got := readCrossOrigin(t, b); got.Expired == 1 && got.Opens == 2 {
			more--
		}
	}
	b.waitFor(t, pageWait, "every published event on the page", fmt.Sprintf("window.ids.length >= %d", len(published)))
	got := readCrossOrigin(t, b)
	if !slices.Equal(got.IDs, published) || got.Expired != 1 || got.Opens != 2 || got.Closed {
		t.Errorf("the page saw ids\n%v\n(%d opens, %d auth-expired, closed %t), want every published id once, in order, over 2 opens and 1 auth-expired:\n%v",
			got.IDs, got.Opens, got.Expired, got.Closed, published)
	}
	if n := metric(t, srv.adminURL, `sse_streams_ended_total{reason="auth_expired"}`); n != 1 {
		t.Errorf(`sse_streams_ended_total{reason="auth_expired"} = %v, want 1`, n)
	}
}

// BenchmarkTopicStream runs one topic stream through the SSE handler, public and then
// private (opened with a token), into a ResponseWriter that takes b.N events and then
// fails as a client that left. The events go straight into the stream's queue, framed once
// beforehand, so allocs/op is what the stream itself spends per event: the token is checked
// once, when the stream opens, so both must show the same.
func BenchmarkTopicStream(b *testing.B) {
	for _, private := range []bool{false, true} {
		name := "public"
		if private {
			name = "private"
		}
		b.Run(name, func(b *testing.B) {
			cfg := streamConfig{Interval: time.Second, Keepalive: time.Hour, Retry: time.Second, WriteTimeout: time.Minute,
				Buffer: 1, MaxClients: 1, SubscriberQueue: 1024, History: historyLimits{age: time.Minute}}
			r := httptest.NewRequest(http.MethodGet, "/sse?topic=orders/1", nil)
			r.Header.Set("Accept", "text/event-stream")
			if private {
				cfg.Auth = authConfig{keys: []verifyKey{{key: []byte(testSecret), algs: []string{"HS256"}}}, cookie: "sse_token"}
				r.Header.Set("Authorization", "Bearer "+hs256(b, grant(time.Hour, []string{"orders/*"}, nil)))
			}
			h := handleSSE(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			w := &eventCounter{header: make(http.Header), limit: b.N}
			frame := appendNamedEvent(nil, []byte("e-1"), "", []byte(`{"User":512}`))
			done := make(chan struct{})
			go func() {
				var sub *subscriber
				for sub == nil {
					fan := h.broker.fan
					fan.mu.Lock()
					for s := range fan.subscribers["orders/1"] {
						sub = s
					}
					fan.mu.Unlock()
					select {
					case <-done:
						return
					default:
						runtime.Gosched()
					}
				}
				// A stream writes each sequence number once: every event is a new one.
				for seq := uint64(1); ; seq++ {
					for !sub.queue.push(&topicEvent{seq: seq, topics: []string{"orders/1"}, frame: frame}) {
						select {
						case <-done:
							return
						default:
							runtime.Gosched() // full: the stream is writing
						}
					}
				}
			}()
			b.ReportAllocs()
			b.ResetTimer()
			h.ServeHTTP(w, r)
			close(done)
			if w.events < b.N {
				b.Fatalf("the stream ended after %d events, want %d", w.events, b.N)
			}
		})
	}
}

func TestEventSourcePackage_ReadsAPrivateTopicWithAnAuthorizationHeader(t *testing.T) {
	skipShort(t, "node and the npm eventsource package")
	// Streams end every second, so the header must travel on every reconnect too.
	srv := startServerEnv(t, authEnv, "-publish-token", "pub", "-max-lifetime", "1s", "-retry", "300ms", "-retry-spread", "0")
	const events = 20
	client := startNPMClient(t, topicURL(srv.url, "orders/1"), events,
		"SSE_TOKEN="+hs256(t, grant(time.Hour, []string{"orders/*"}, nil)))
	eventually(t, 10*time.Second, "the client subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })

	var want []string
	for i := range events {
		data := fmt.Sprintf("order event %d", i)
		want = append(want, fmt.Sprintf(`{"id":%q,"data":%q}`, publishAs(t, srv.adminURL, "pub", "orders/1", data), data))
		time.Sleep(100 * time.Millisecond)
	}
	client.expect(t, want)
	if n := metric(t, srv.adminURL, `sse_auth_failures_total{reason="missing"}`); n != 0 {
		t.Errorf(`sse_auth_failures_total{reason="missing"} = %v, want 0: every request carried the header`, n)
	}
}

// signRaw returns a token whose header and payload are the JSON texts given, byte for
// byte, signed HS256 with testSecret: for claims that jwt.NewWithClaims could not write.
func signRaw(t testing.TB, header, payload string) string {
	t.Helper()
	signing := b64([]byte(header)) + "." + b64([]byte(payload))
	signature, err := jwt.SigningMethodHS256.Sign(signing, []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64(signature)
}

func TestAuth_RefusesTokensWhoseJSONReadsTwoWays(t *testing.T) {
	t.Parallel()
	srv := startServerEnv(t, authEnv)
	now := time.Now().Unix()
	fill := strings.NewReplacer(
		"$GRANT", `"sse":{"subscribe":["orders/1"],"publish":["orders/1"]}`,
		"$EXP", strconv.FormatInt(now+3600, 10),
		"$PAST", strconv.FormatInt(now-3600, 10),
		"$NOW", strconv.FormatInt(now, 10),
	).Replace
	const hs256Header = `{"alg":"HS256","typ":"JWT"}`
	tests := []struct {
		name, header, claims string
		reason               string // empty: the token is taken
	}{
		{"as issued", hs256Header, `{$GRANT,"exp":$EXP}`, ""},
		{"nbf and iat as numbers, a null nbf", hs256Header, `{$GRANT,"exp":$EXP,"iat":$NOW,"nbf":null}`, ""},
		{"sse in capitals", hs256Header, `{"SSE":{"subscribe":["orders/1"],"publish":["orders/1"]},"exp":$EXP}`, `claims: a key differs from "sse" only in case`},
		{"sse with a long s, which encoding/json folds to s", hs256Header, `{"ſse":{"subscribe":["orders/1"],"publish":["orders/1"]},"exp":$EXP}`, `claims: a key differs from "sse" only in case`},
		{"subscribe and publish in capitals", hs256Header, `{"sse":{"Subscribe":["orders/1"],"Publish":["orders/1"]},"exp":$EXP}`, `claims: a key differs from "subscribe" only in case`},
		{"a past EXP before the exp", hs256Header, `{$GRANT,"EXP":$PAST,"exp":$EXP}`, `claims: a key differs from "exp" only in case`},
		{"sse twice, the last granting", hs256Header, `{"sse":{"subscribe":["none"]},$GRANT,"exp":$EXP}`, "claims: a key appears twice in one object"},
		{"exp twice, the last in the future", hs256Header, `{$GRANT,"exp":$PAST,"exp":$EXP}`, "claims: a key appears twice in one object"},
		{"subscribe and publish twice", hs256Header, `{"sse":{"subscribe":[],"publish":[],"subscribe":["orders/1"],"publish":["orders/1"]},"exp":$EXP}`, "claims: a key appears twice in one object"},
		{"a claim of another's twice", hs256Header, `{$GRANT,"exp":$EXP,"role":"user","role":"admin"}`, "claims: a key appears twice in one object"},
		{"exp as a string", hs256Header, `{$GRANT,"exp":"$EXP"}`, `claims: "exp" is a string, not a number`},
		{"nbf as a string", hs256Header, `{$GRANT,"exp":$EXP,"nbf":"$PAST"}`, `claims: "nbf" is a string, not a number`},
		{"iat as a string", hs256Header, `{$GRANT,"exp":$EXP,"iat":"$NOW"}`, `claims: "iat" is a string, not a number`},
		{"a claim not in UTF-8", hs256Header, `{$GRANT,"exp":$EXP,"name":"` + "\xff" + `"}`, "claims: not valid UTF-8"},
		{"alg twice in the header", `{"alg":"none","alg":"HS256"}`, `{$GRANT,"exp":$EXP}`, "header: a key appears twice in one object"},
	}
	refused, taken := 0, 0
	for _, tt := range tests {
		token := signRaw(t, tt.header, fill(tt.claims))
		wantStatus := http.StatusUnauthorized
		if tt.reason == "" {
			wantStatus, taken = http.StatusOK, taken+1
		} else {
			refused++
		}
		status, header, body := getTopic(t, srv, http.MethodGet, topicURL("", "orders/1"), http.Header{"Authorization": {"Bearer " + token}})
		if status != wantStatus || !strings.Contains(body, tt.reason) {
			t.Errorf("%s: GET /sse with %s = %d %q, want %d with %q", tt.name, fill(tt.claims), status, body, wantStatus, tt.reason)
		}
		if tt.reason != "" && header.Get("WWW-Authenticate") != `Bearer realm="sse", error="invalid_token"` {
			t.Errorf("%s: WWW-Authenticate = %q, want the invalid_token challenge", tt.name, header.Get("WWW-Authenticate"))
		}
		status, answer := publish(t, srv.adminURL, token, []byte(`{"topic":"orders/1","data":1}`))
		if status != wantStatus || !strings.Contains(answer, tt.reason) {
			t.Errorf("%s: POST /publish with %s = %d %q, want %d with %q", tt.name, fill(tt.claims), status, answer, wantStatus, tt.reason)
		}
	}
	m := scrape(t, srv.adminURL)
	if got, want := m[`sse_auth_failures_total{reason="invalid"}`], float64(2*refused); got != want {
		t.Errorf(`sse_auth_failures_total{reason="invalid"} = %v, want %v: each refused token once to subscribe, once to publish`, got, want)
	}
	if got := m["sse_hub_published_total"]; got != float64(taken) {
		t.Errorf("sse_hub_published_total = %v, want %d: the tokens taken alone publish", got, taken)
	}
}
