package main

import (
	"flag"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantPos    []string
		wantReason string
		wantAll    bool
	}{
		{"flags after the id", []string{"job-1", "--reason", "BMC hung"}, []string{"job-1"}, "BMC hung", false},
		{"flags before the id", []string{"--reason=x", "job-1"}, []string{"job-1"}, "x", false},
		{"mixed", []string{"--all", "a", "--reason", "r", "b"}, []string{"a", "b"}, "r", true},
		{"double dash keeps the rest", []string{"--", "--reason"}, []string{"--reason"}, "", false},
		{"none", nil, nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			reason := fs.String("reason", "", "")
			all := fs.Bool("all", false, "")
			pos, err := parseInterspersed(fs, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pos, tt.wantPos) || *reason != tt.wantReason || *all != tt.wantAll {
				t.Fatalf("got pos %q reason %q all %v", pos, *reason, *all)
			}
		})
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := parseInterspersed(fs, []string{"a", "--nope"}); err == nil {
		t.Fatal("an unknown flag after a positional argument must be an error")
	}
}

// TestDataDirInUse: a second embedded server on the same DATA_DIR is
// refused (two JetStream servers must never share one store).
func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	port := -1
	cfg := Config{DataDir: dir, NATSListen: "127.0.0.1:4222"}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	first, err := openInfra(t.Context(), cfg, logger, infraOptions{embedNATS: true, natsPort: &port})
	if err != nil {
		t.Fatal(err)
	}
	_, err = openInfra(t.Context(), cfg, logger, infraOptions{embedNATS: true, natsPort: &port})
	if err == nil || !strings.Contains(err.Error(), "COMJOBS_DATA_DIR") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second server on the same data dir: want an error naming COMJOBS_DATA_DIR, got %v", err)
	}
	first.Close()
	again, err := openInfra(t.Context(), cfg, logger, infraOptions{embedNATS: true, natsPort: &port})
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	again.Close()
}
