package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `comjobs demo --quiet` in-process: it is the demo's
// guarantee that every request reaches its expected end and the summary
// says so.
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 85*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Main(ctx, []string{"demo", "--quiet"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("comjobs demo exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), tail(stderr.String(), 60))
	}
	if !strings.Contains(stdout.String(), "every request reached its expected end") {
		t.Errorf("the demo's summary does not say every request reached its end:\n%s", stdout.String())
	}
}
