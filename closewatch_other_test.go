//go:build !linux

package main

// closesWatched says that streams here learn that their client closed its connection only
// when a write fails.
const closesWatched = false
