package main

import "github.com/gofiber/fiber/v2"

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
