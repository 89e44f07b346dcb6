package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/comjobs/comjobs/consumer"
	"github.com/comjobs/comjobs/internal/startup"
	"github.com/comjobs/comjobs/notify"
	"github.com/comjobs/comjobs/notify/console"
	slacksink "github.com/comjobs/comjobs/notify/slack"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
	"github.com/comjobs/comjobs/tracker"
)

// Roles of the service.
const (
	roleConsumer = "consumer"
	roleTracker  = "tracker"
	roleNotifier = "notifier"
)

// parseRoles reads a --roles value: comma-separated, spaces allowed.
func parseRoles(s string) (map[string]bool, error) {
	roles := map[string]bool{}
	for _, r := range strings.Split(s, ",") {
		r = strings.ToLower(strings.TrimSpace(r))
		switch r {
		case "":
		case roleConsumer, roleTracker, roleNotifier:
			roles[r] = true
		default:
			return nil, fmt.Errorf("--roles: unknown role %q (want consumer, tracker, notifier)", r)
		}
	}
	if len(roles) == 0 {
		return nil, errors.New("--roles: no role given")
	}
	return roles, nil
}

func cmdRun(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "run", "run [--roles consumer,tracker,notifier]")
	rolesFlag := fs.String("roles", "consumer,tracker,notifier", "roles to run in this process")
	if err := fs.Parse(args); err != nil {
		return err
	}
	roles, err := parseRoles(*rolesFlag)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	svc, err := startService(ctx, env, roles, serviceOptions{infra: infraOptions{embedNATS: true, simulate: true, needCOM: roles[roleConsumer] || roles[roleTracker], banner: env.Stderr}})
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Stopped (SIGTERM, SIGINT) while waiting for NATS to answer:
		// nothing had started, so that is a clean stop.
		env.Logger.Info("stopped before start-up finished", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	return svc.Wait()
}

// serviceOptions tune startService beyond the settings (the demo and tests
// use them).
type serviceOptions struct {
	infra infraOptions
	// console receives console notifications (default env.Stdout).
	console io.Writer
	// httpBound, when set, receives the HTTP listener's address.
	httpBound chan<- string
	// tracker and consumer tweaks.
	trackerConfig  func(*tracker.Config)
	consumerConfig func(*consumer.Config)
	notifyConfig   func(*notify.Config)
}

// service is a running comjobs: infrastructure, roles and the HTTP listener.
type service struct {
	env      *Env
	in       *infra
	consumer *consumer.Consumer
	tracker  *tracker.Tracker
	notifier *notify.Notifier
	rctx     context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	errMu    sync.Mutex
	errs     []error
	done     chan struct{}
}

// startService builds and starts the roles; Wait blocks until ctx ends and
// everything has drained.
func startService(ctx context.Context, env *Env, roles map[string]bool, o serviceOptions) (_ *service, err error) {
	cfg := env.Config
	logger := env.Logger
	in, err := openInfra(ctx, cfg, logger, o.infra)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	if in.embedded == nil {
		// A cluster that does not answer yet (a server restarting, a
		// leader election) is waited for; a missing topology is not.
		if err := startup.Retry(ctx, logger, "topology check", startup.Wait, func(ctx context.Context) error {
			return topology.Check(ctx, in.js)
		}); err != nil {
			return nil, err
		}
	}
	pub := publisher.New(in.js, logger.With("component", "publisher"))
	ready := &readiness{}
	ready.add("nats", func(context.Context) error {
		if !in.nc.IsConnected() {
			return fmt.Errorf("not connected (%s)", in.nc.Status())
		}
		return nil
	})
	ready.add("topology", func(ctx context.Context) error { return topology.Check(ctx, in.js) })
	if in.com != nil {
		ready.add("com", func(context.Context) error { return in.com.Reachable() })
	}

	s := &service{env: env, in: in, done: make(chan struct{})}
	mux := newMux(in.reg, ready)

	if roles[roleConsumer] {
		v, err := schemas.NewValidator()
		if err != nil {
			return nil, fmt.Errorf("schemas: %w", err)
		}
		var pol *consumer.Policy
		if cfg.PolicyFile != "" {
			if pol, err = consumer.LoadPolicy(cfg.PolicyFile); err != nil {
				return nil, fmt.Errorf("settings: COMJOBS_POLICY_FILE: %w", err)
			}
			logger.Info("authorisation policy loaded", "file", cfg.PolicyFile)
		}
		ccfg := consumer.Config{Workers: cfg.Workers, MaxSize: cfg.MaxEventSize, POSTTimeout: cfg.COMTimeout + 5*time.Second, DrainTimeout: cfg.ShutdownTimeout * 2 / 3}
		if o.consumerConfig != nil {
			o.consumerConfig(&ccfg)
		}
		s.consumer, err = consumer.New(ccfg, consumer.Deps{
			JS: in.js, COM: in.com, Publisher: pub, Validator: v,
			Logger: logger, Registerer: in.reg, Policy: pol,
		})
		if err != nil {
			return nil, fmt.Errorf("consumer: %w", err)
		}
		ready.add(roleConsumer, func(context.Context) error { return s.consumer.Ready() })
	}
	if roles[roleTracker] {
		tcfg := tracker.Config{PollInterval: cfg.PollInterval, WebhookSecret: cfg.WebhookSecret}
		if o.trackerConfig != nil {
			o.trackerConfig(&tcfg)
		}
		s.tracker, err = tracker.New(tcfg, tracker.Deps{
			JS: in.js, COM: in.com, Publisher: pub,
			Logger: logger, Registry: in.reg,
		})
		if err != nil {
			return nil, fmt.Errorf("tracker: %w", err)
		}
		ready.add(roleTracker, func(context.Context) error { return s.tracker.Ready() })
		if cfg.WebhookSecret != "" {
			mux.Handle("/webhooks/com", s.tracker.WebhookHandler())
		}
	}
	if roles[roleNotifier] {
		sink, err := newSink(env, o.console, in)
		if err != nil {
			return nil, err
		}
		ncfg := notify.Config{
			DefaultChannel: cfg.SlackChannel, PostSubmitted: cfg.NotifySubmitted, PostRunning: cfg.NotifyRunning,
			NoRejected: !cfg.NotifyRejected, StalledRepeat: cfg.StalledRepeat, ChannelInterval: cfg.SlackPace,
		}
		if cfg.RoutesFile != "" {
			if ncfg.Routes, err = notify.LoadRoutes(cfg.RoutesFile); err != nil {
				return nil, fmt.Errorf("settings: COMJOBS_ROUTES_FILE: %w", err)
			}
		}
		if o.notifyConfig != nil {
			o.notifyConfig(&ncfg)
		}
		s.notifier, err = notify.New(ncfg, notify.Deps{JS: in.js, Sink: sink, Logger: logger, Registerer: in.reg})
		if err != nil {
			return nil, fmt.Errorf("notifier: %w", err)
		}
		ready.add(roleNotifier, func(context.Context) error { return s.notifier.Ready() })
	}

	rctx, cancel := context.WithCancel(context.Background())
	s.rctx, s.cancel = rctx, cancel
	start := func(name string, run func(context.Context) error) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := run(rctx); err != nil && !errors.Is(err, context.Canceled) {
				logger.Error("role stopped with an error: stopping the others", "role", name, "err", err)
				s.errMu.Lock()
				s.errs = append(s.errs, fmt.Errorf("%s: %w", name, err))
				s.errMu.Unlock()
				// A process missing one of its roles would look healthy
				// while doing less than asked: stop, exit non-zero, and let
				// the supervisor restart it.
				s.cancel()
			}
		}()
	}
	if s.consumer != nil {
		start(roleConsumer, s.consumer.Run)
	}
	if s.tracker != nil {
		start(roleTracker, s.tracker.Run)
	}
	if s.notifier != nil {
		start(roleNotifier, s.notifier.Run)
	}
	if cfg.HTTPAddr != "" {
		paths := "/healthz /readyz /metrics"
		if s.tracker != nil && cfg.WebhookSecret != "" {
			paths += " /webhooks/com"
		}
		start("http", func(ctx context.Context) error { return serveHTTP(ctx, cfg.HTTPAddr, mux, paths, logger, o.httpBound) })
	}
	var names []string
	for r := range roles {
		names = append(names, r)
	}
	logger.Info("comjobs started", "version", version, "roles", strings.Join(names, ","), "com_api", cfg.COMAPIVersion)
	// Stop when the caller's context ends.
	go func() {
		select {
		case <-ctx.Done():
			s.stop()
		case <-s.done:
		}
	}()
	return s, nil
}

// stop ends the roles' context: each stops fetching, finishes or hands back
// what it holds, and returns.
func (s *service) stop() {
	s.env.Logger.Info("shutting down: draining in-flight work", "bound", s.env.Config.ShutdownTimeout)
	s.cancel()
}

// Wait blocks until the roles have stopped (after the start context ended),
// then releases NATS, the simulator and the embedded server. Roles that do
// not drain within COMJOBS_SHUTDOWN_TIMEOUT are abandoned with an error.
func (s *service) Wait() error {
	stopped := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(stopped)
	}()
	<-s.rctx.Done()
	var err error
	select {
	case <-stopped:
	case <-time.After(s.env.Config.ShutdownTimeout):
		err = fmt.Errorf("shutdown: roles still busy after %s", s.env.Config.ShutdownTimeout)
	}
	close(s.done)
	s.in.Close()
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if len(s.errs) > 0 {
		err = errors.Join(append(s.errs, err)...)
	}
	if err == nil {
		s.env.Logger.Info("comjobs stopped cleanly")
	}
	return err
}

func newSink(env *Env, consoleOut io.Writer, in *infra) (notify.Sink, error) {
	cfg := env.Config
	switch {
	case cfg.SlackToken != "":
		b, err := slacksink.NewBot(cfg.SlackToken, cfg.SlackAPIURL, &http.Client{Transport: in.hc.Transport, Timeout: 30 * time.Second})
		if err != nil {
			return nil, fmt.Errorf("settings: COMJOBS_SLACK_TOKEN: %w", err)
		}
		env.Logger.Info("notifications go to Slack (bot token)", "default_channel", cfg.SlackChannel)
		return b, nil
	case cfg.SlackWebhookURL != "":
		w, err := slacksink.NewWebhook(cfg.SlackWebhookURL, &http.Client{Transport: in.hc.Transport, Timeout: 30 * time.Second})
		if err != nil {
			return nil, errors.New("settings: COMJOBS_SLACK_WEBHOOK_URL: not usable (value hidden)")
		}
		env.Logger.Info("notifications go to a Slack incoming webhook (at-least-once, fixed channel)")
		return w, nil
	default:
		if consoleOut == nil {
			consoleOut = env.Stdout
		}
		env.Logger.Info("no Slack setting: notifications are printed to the console")
		return console.New(consoleOut), nil
	}
}
