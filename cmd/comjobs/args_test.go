package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
	cfg := Config{DataDir: dir, NATSListen: "127.0.0.1:0"}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	first, err := openInfra(t.Context(), cfg, logger, infraOptions{embedNATS: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = openInfra(t.Context(), cfg, logger, infraOptions{embedNATS: true})
	if err == nil || !strings.Contains(err.Error(), "COMJOBS_DATA_DIR") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second server on the same data dir: want an error naming COMJOBS_DATA_DIR, got %v", err)
	}
	first.Close()
	again, err := openInfra(t.Context(), cfg, logger, infraOptions{embedNATS: true})
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	again.Close()
}

// TestRoleFailureStopsTheService: a part that cannot run (here the HTTP
// listener, its port taken) stops the whole process with an error naming
// the setting, instead of leaving it half up.
func TestRoleFailureStopsTheService(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("COMJOBS_DATA_DIR", t.TempDir())
	t.Setenv("COMJOBS_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("COMJOBS_HTTP_ADDR", ln.Addr().String())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Main(ctx, []string{"run"}, &stdout, &stderr)
	if code == 0 {
		t.Fatal("run with its HTTP port taken exited 0")
	}
	if ctx.Err() != nil {
		t.Fatal("run did not stop by itself")
	}
	if !strings.Contains(stderr.String(), "COMJOBS_HTTP_ADDR") {
		t.Fatalf("the error does not name COMJOBS_HTTP_ADDR:\n%s", stderr.String())
	}
}

// TestRunWaitsForJetStream: against a NATS server without JetStream the
// topology check gets no answer. run waits (saying so) instead of exiting
// with a missing-topology error, and a stop during that wait is a clean
// exit.
func TestRunWaitsForJetStream(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	defer s.Shutdown()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Setenv("COMJOBS_NATS_URL", s.ClientURL())
	t.Setenv("COMJOBS_HTTP_ADDR", "")
	ctx, cancel := context.WithCancel(t.Context()) // cancelled, as a signal does
	defer cancel()
	time.AfterFunc(3*time.Second, cancel)
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := Main(ctx, []string{"run", "--roles", "notifier"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("run stopped while waiting for JetStream exited %d, want 0:\n%s", code, stderr.String())
	}
	if time.Since(start) < 2*time.Second {
		t.Fatalf("run returned after %s, before it was stopped:\n%s", time.Since(start), stderr.String())
	}
	logs := stdout.String() + stderr.String()
	if !strings.Contains(logs, "JetStream does not answer yet") || strings.Contains(logs, "run `comjobs setup`") {
		t.Fatalf("run's output should say it waits for JetStream, not that the topology is missing:\n%s", logs)
	}
}
