package main

// The dashboard page: its files, embedded so that the binary runs from any directory, its
// headers, and the other origins whose streams it may show (-page-sources).

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html"
	"mime"
	"net/url"
	"path"
	"strings"

	"github.com/gofiber/fiber/v2"
)

//go:embed web/index.html web/app.js web/style.css
var webFiles embed.FS

// handlePage serves the embedded page and its assets, so the binary runs from any directory.
// origins are the other origins whose streams the page may show (-page-sources): the
// Content-Security-Policy lets it connect to them alone, and the page reads them from its
// page-sources meta tag, filled in here once, so the page stays the same for the life of the process.
// Every answer advertises the Mercure hub with link, a Link header with rel="mercure".
func handlePage(origins []string, link string) fiber.Handler {
	type file struct {
		body        []byte
		contentType string
	}
	files := make(map[string]file)
	entries, err := webFiles.ReadDir("web")
	if err != nil {
		panic(err) // the files are compiled in: this cannot fail at run time
	}
	for _, entry := range entries {
		body, err := webFiles.ReadFile("web/" + entry.Name())
		if err != nil {
			panic(err)
		}
		files["/"+entry.Name()] = file{body, mime.TypeByExtension(path.Ext(entry.Name()))}
	}
	const emptySources = `<meta name="page-sources" content="">`
	index := files["/index.html"]
	if bytes.Count(index.body, []byte(emptySources)) != 1 {
		panic("web/index.html must hold " + emptySources + " once")
	}
	sources := `<meta name="page-sources" content="` + html.EscapeString(strings.Join(origins, " ")) + `">`
	index.body = bytes.Replace(index.body, []byte(emptySources), []byte(sources), 1)
	files["/index.html"] = index
	files["/"] = index
	// The page may run only its own script and style, and open streams only on its own
	// origin and those that -page-sources lists.
	headers := map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
			"connect-src " + strings.Join(append([]string{"'self'"}, origins...), " ") +
			"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"Cache-Control":          "no-cache",
		"Link":                   link,
	}
	return func(c *fiber.Ctx) error {
		f, ok := files[c.Path()]
		if !ok {
			return fiber.ErrNotFound
		}
		for key, value := range headers {
			c.Set(key, value)
		}
		c.Set(fiber.HeaderContentType, f.contentType)
		return c.Send(f.body)
	}
}

// pageOrigins splits the -page-sources list at commas, dropping spaces and empty entries.
func pageOrigins(list string) []string {
	var origins []string
	for origin := range strings.SplitSeq(list, ",") {
		if origin = strings.TrimSpace(origin); origin != "" {
			origins = append(origins, origin)
		}
	}
	return origins
}

// checkOrigin accepts an origin only as a browser writes it (scheme://host[:port], lower
// case, no default port, no path), because the page compares it with URL.origin and the
// Content-Security-Policy quotes it as it is.
func checkOrigin(origin string) error {
	u, err := url.Parse(origin)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("want an http or https origin such as https://a.example")
	}
	host := u.Hostname()
	if host == "" || strings.ContainsFunc(host, func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '.' && r != '-' && r != ':'
	}) {
		return errors.New("want a host name or IP address, in lower case, without wildcards")
	}
	want := u.Scheme + "://" + u.Host
	if port := u.Port(); (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		want = u.Scheme + "://" + strings.TrimSuffix(u.Host, ":"+port)
	}
	if origin != want {
		return fmt.Errorf("want the bare origin %q (no path, query, user or default port)", want)
	}
	return nil
}
