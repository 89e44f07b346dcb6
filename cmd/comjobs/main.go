// Command comjobs carries HPE Compute Ops Management job requests from NATS
// JetStream to COM and the jobs' progress back out as CloudEvents, with Slack
// notifications for people. See README.md; `comjobs help` lists commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// version is set at build time (-ldflags -X main.version=...).
var version = "dev"

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, env *Env, args []string) error
}

// Env is what a command gets from main: settings, logger and output. Tests
// build their own.
type Env struct {
	Config Config
	Logger *slog.Logger
	Stdout io.Writer
	Stderr io.Writer
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"run":       {"run the service (all roles, or --roles consumer,tracker,notifier)", cmdRun},
		"demo":      {"run everything embedded and a batch of realistic requests, then a summary", cmdDemo},
		"sim":       {"run the COM simulator alone", cmdSim},
		"setup":     {"create or update the JetStream streams, buckets and consumers", cmdSetup},
		"submit":    {"publish one request (flags) or many (--file); --wait follows each job", cmdSubmit},
		"templates": {"list the job template catalog with parameters", cmdTemplates},
		"tail":      {"stream job events live, filtered by state, template or label", cmdTail},
		"jobs":      {"tracked jobs: list, show <id>, end <id> --reason ...", cmdJobs},
		"dlq":       {"dead letters: list, replay <seq>|--all", cmdDLQ},
		"pause":     {"stop submitting to COM without losing the queue", cmdPause},
		"resume":    {"resume submitting", cmdResume},
		"version":   {"print the version", cmdVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Main runs one command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	name := args[0]
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "comjobs: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	help := wantsHelp(args[1:])
	// `jobs --help` and `dlq --help` name no subcommand: the command's
	// summary and the settings. Every other --help reaches the command's
	// own flag set, which prints its flags and the settings.
	if help && (name == "jobs" || name == "dlq") && (len(args) < 2 || strings.HasPrefix(args[1], "-")) {
		fmt.Fprintf(stdout, "comjobs %s — %s\n\nSettings (environment):\n", name, cmd.summary)
		PrintSettings(stdout)
		return 0
	}
	var cfg Config
	if name != "version" && name != "templates" {
		var err error
		cfg, err = LoadConfig()
		if err != nil && !help {
			fmt.Fprintln(stderr, "comjobs:", err)
			return 2
		}
	}
	if cfg.LogFormat == "" {
		cfg.LogFormat, cfg.LogLevel = "text", "info"
	}
	errOut := stderr
	if help {
		errOut = stdout // usage is the answer, not an error
	}
	env := &Env{Config: cfg, Logger: newLogger(stderr, cfg.LogFormat, cfg.LogLevel), Stdout: stdout, Stderr: errOut}
	err := cmd.run(ctx, env, args[1:])
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "comjobs:", ee.err)
		}
		return ee.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "comjobs:", err)
	return 1
}

func wantsHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			return true
		}
	}
	return false
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "comjobs %s — HPE Compute Ops Management jobs over NATS JetStream\n\nUsage: comjobs <command> [flags]\n\nCommands:\n", version)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\n`comjobs <command> --help` shows its flags and every setting (COMJOBS_* environment variables).")
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// newFlags makes a FlagSet for a subcommand whose usage also lists settings.
func newFlags(env *Env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: comjobs %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
		fmt.Fprintln(env.Stderr, "\nSettings (environment):")
		PrintSettings(env.Stderr)
	}
	return fs
}

func cmdVersion(_ context.Context, env *Env, args []string) error {
	fs := newFlags(env, "version", "version")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "comjobs", version)
	return nil
}

// parseInterspersed parses flags that may stand before, between or after
// positional arguments (`jobs end <id> --reason x`), which flag.Parse alone
// stops at, and returns the positional arguments in order.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
