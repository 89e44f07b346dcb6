// Package poll waits in tests for something another goroutine or process
// makes true: the one polling loop the test suites share.
package poll

import (
	"testing"
	"time"
)

// Every is how often Until tries its condition.
const Every = 20 * time.Millisecond

// Until calls cond every Every until it reports true, and fails t (Fatal)
// once within has passed, with what and the last state cond described.
func Until(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if state != "" {
				t.Fatalf("%s: not within %s: %s", what, within, state)
			}
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(Every)
	}
}

// True is Until for a condition with no state to describe.
func True(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	Until(t, within, what, func() (bool, string) { return cond(), "" })
}
