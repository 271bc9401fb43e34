package main

// What every public request goes through before and after its route: the version and path
// checks, the goroutine a stream is converted on, and the answer to a failed request.

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// offWorker runs h on a short-lived goroutine and waits for it, then panics again on the
// calling goroutine if h panicked, so that the recover middleware still answers 500.
// fasthttp's worker goroutine writes a stream's body for the stream's whole life, and a
// goroutine's stack, once grown, stays grown while that much of it is in use: converting
// the request for net/http on the worker would take its stack from 4 to 8 KB for every open
// stream, while the short-lived goroutine gives that depth back when the handler returns.
func offWorker(h fiber.Handler) fiber.Handler {
	return func(c *fiber.Ctx) error {
		var err error
		var panicked any
		done := make(chan struct{})
		go func() {
			defer func() {
				panicked = recover()
				close(done)
			}()
			err = h(c)
		}()
		<-done
		if panicked != nil {
			panic(panicked)
		}
		return err
	}
}

// rejectUnknownVersions answers 505 to a request in any HTTP version but 1.x. fasthttp
// would serve HTTP/0.9 or HTTP/9.9 as if it were HTTP/1.0; a later 1.x is served as 1.1.
func rejectUnknownVersions(c *fiber.Ctx) error {
	proto := c.Request().Header.Protocol()
	if len(proto) != len("HTTP/1.1") || !bytes.HasPrefix(proto, []byte("HTTP/1.")) || proto[7] < '0' || proto[7] > '9' {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(fiber.StatusHTTPVersionNotSupported).SendString("505 http version not supported: this server speaks HTTP/1.0 and HTTP/1.1\n")
	}
	return c.Next()
}

// rejectAmbiguousPaths answers 400 to a path with dot segments, encoded slashes, dots or
// backslashes, or a % that starts no escape. Only scanners send them, and serving what they normalise to would hide
// what was asked for. Under the Mercure subscription API, whose path segments are
// percent-encoded topics and matchers, only dot segments and backslashes are refused.
func rejectAmbiguousPaths(c *fiber.Ctx) error {
	target, _, _ := strings.Cut(string(c.Request().Header.RequestURI()), "?")
	lower := strings.ToLower(target)
	encoded := !strings.HasPrefix(target, mercurePath+"/subscriptions/") &&
		(strings.Contains(lower, "%2f") || strings.Contains(lower, "%2e") || strings.Contains(lower, "%5c"))
	_, badEscape := url.PathUnescape(target)
	if strings.Contains(target+"/", "/../") || strings.Contains(target+"/", "/./") || strings.ContainsRune(target, '\\') || encoded || badEscape != nil {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(fiber.StatusBadRequest).SendString("400 bad request: path has dot segments or encoded separators\n")
	}
	return c.Next()
}

// limitBodies answers 413 to a request that announces a body over limit, unless it publishes
// to the Mercure hub, whose forms may be longer (up to maxMercurePublish, which the server
// holds every request to).
func limitBodies(limit int) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if c.Request().Header.ContentLength() > limit && (c.Method() != fiber.MethodPost || c.Path() != mercurePath) {
			c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
			return c.Status(fiber.StatusRequestEntityTooLarge).SendString("413 content too large\n")
		}
		return c.Next()
	}
}

// handleError answers every failed request with its status and a one-line plain-text
// reason, and logs server errors.
func handleError(logger *slog.Logger) fiber.ErrorHandler {
	return func(c *fiber.Ctx, err error) error {
		code := fiber.StatusInternalServerError
		var fe *fiber.Error
		if errors.As(err, &fe) {
			code = fe.Code
		}
		if code >= fiber.StatusInternalServerError {
			logger.Error("request failed", "method", c.Method(), "path", c.Path(), "status", code, "error", err)
		}
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(code).SendString(fmt.Sprintf("%d %s\n", code, strings.ToLower(http.StatusText(code))))
	}
}
