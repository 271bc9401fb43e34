package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"testing"
)

func TestDashBoard_AppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, user := range []uint{0, 1, 42, maxUsers, math.MaxUint} {
		d := DashBoard{User: user}
		want, _ := json.Marshal(d)
		if got := d.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("AppendJSON(%d) = %s, want %s", user, got, want)
		}
	}
}

func TestNextUsers_StaysWithinBounds(t *testing.T) {
	for _, start := range []uint{0, 10, maxUsers / 2, maxUsers - 3, maxUsers} {
		u := start
		for range 1000 {
			next := nextUsers(u)
			if next > maxUsers || max(next, u)-min(next, u) > 25 {
				t.Fatalf("nextUsers(%d) = %d, want a step of at most 25 within [0, %d]", u, next, maxUsers)
			}
			u = next
		}
	}
}

// ExampleDashBoard_AppendJSON shows the data of one event.
func ExampleDashBoard_AppendJSON() {
	fmt.Println(string((&DashBoard{User: 42}).AppendJSON(nil)))
	// Output: {"User":42}
}
