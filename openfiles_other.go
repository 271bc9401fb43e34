//go:build !unix

package main

import "math"

// openFileLimit returns no limit: systems without RLIMIT_NOFILE, such as Windows, bound
// open sockets by memory alone, so -max-clients is left as it is.
func openFileLimit() (uint64, error) {
	return math.MaxUint64, nil
}
