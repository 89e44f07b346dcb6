package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/topology"
)

// infra is the shared plumbing every command that talks to NATS and COM
// needs: the connection, JetStream, the COM client, and whatever embedded
// server or simulator this process started itself.
type infra struct {
	cfg      Config
	logger   *slog.Logger
	reg      *prometheus.Registry
	embedded *natsrv.Server
	sim      *comsim.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	hc       *http.Client
	com      *com.Client
	// simContact is the file telling local commands where the simulator is.
	simContact string
	// unlock releases DATA_DIR for another embedded server.
	unlock func()
}

// infraOptions say what to start when settings leave it open.
type infraOptions struct {
	// embedNATS: start an embedded server when NATS_URL is empty (run, demo);
	// otherwise an empty NATS_URL means nats://127.0.0.1:4222.
	embedNATS bool
	// simulate: start the COM simulator when COM_BASE_URL is empty.
	simulate bool
	// simOptions for a started simulator.
	simOptions comsim.Options
	// needCOM: build a COM client.
	needCOM bool
	// banner receives the loud notices (simulator in use, embedded server).
	banner io.Writer
}

// openInfra connects to (or starts) NATS and COM. Close releases all of it.
func openInfra(ctx context.Context, cfg Config, logger *slog.Logger, o infraOptions) (_ *infra, err error) {
	in := &infra{cfg: cfg, logger: logger, reg: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	in.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	url := cfg.NATSURL
	if url == "" && o.embedNATS {
		host, portStr, _ := net.SplitHostPort(cfg.NATSListen)
		port, perr := strconv.Atoi(portStr)
		if perr != nil {
			return nil, fmt.Errorf("settings: COMJOBS_NATS_LISTEN: bad port %q", portStr)
		}
		if port == 0 {
			port = -1 // nats-server takes 0 as its default, 4222; here 0 means any free port
		}
		dir := filepath.Join(cfg.DataDir, "nats")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("settings: COMJOBS_DATA_DIR: %w", err)
		}
		unlock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		in.unlock = unlock
		s, err := natsrv.Start(natsrv.Options{Name: "comjobs", Host: host, Port: port, StoreDir: dir, Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("embedded NATS on %s: %w", cfg.NATSListen, err)
		}
		in.embedded = s
		url = s.ClientURL()
		if o.banner != nil {
			fmt.Fprintf(o.banner, "comjobs: embedded NATS JetStream server at %s (data in %s)\n", url, dir)
		}
	} else if url == "" {
		// The embedded server of a local `comjobs run` listens here.
		url = "nats://" + cfg.NATSListen
	}
	nopts := []nats.Option{
		nats.Name("comjobs"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { logger.Info("NATS reconnected", "url", c.ConnectedUrlRedacted()) }),
	}
	if cfg.NATSCreds != "" {
		nopts = append(nopts, nats.UserCredentials(cfg.NATSCreds))
	}
	in.nc, err = nats.Connect(url, nopts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", redactURL(url), err)
	}
	in.js, err = jetstream.New(in.nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if in.embedded != nil {
		if _, err := topology.Ensure(ctx, in.js, topology.Options{Replicas: 1}); err != nil {
			return nil, fmt.Errorf("topology: %w", err)
		}
	}

	in.hc = &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}}
	if !o.needCOM {
		return in, nil
	}
	ccfg := com.Config{
		BaseURL: cfg.COMBaseURL, TokenURL: cfg.COMTokenURL, ClientID: cfg.COMClientID,
		ClientSecret: cfg.COMClientSecret, APIVersion: cfg.COMAPIVersion, TenantACID: cfg.COMTenantACID,
		Timeout: cfg.COMTimeout, RatePerMinute: cfg.COMRatePerMin,
	}
	if cfg.COMBaseURL == "" && !o.simulate {
		// A simulator started by `comjobs run` on this data dir leaves its
		// address behind, so `comjobs jobs end` works against it locally.
		if sc, ok := readSimContact(cfg.DataDir); ok {
			ccfg.BaseURL, ccfg.TokenURL, ccfg.ClientID, ccfg.ClientSecret = sc.BaseURL, sc.TokenURL, sc.ClientID, sc.ClientSecret
			if o.banner != nil {
				fmt.Fprintf(o.banner, "comjobs: COMJOBS_COM_BASE_URL is not set: using the simulator of `comjobs run` at %s\n", sc.BaseURL)
			}
		} else {
			return nil, errors.New("settings: COMJOBS_COM_BASE_URL is not set")
		}
	} else if cfg.COMBaseURL == "" {
		simOpts := o.simOptions
		simOpts.Logger = logger.With("component", "comsim")
		if simOpts.ClientID == "" {
			simOpts.ClientID = "comjobs-sim"
		}
		if simOpts.ClientSecret == "" {
			simOpts.ClientSecret = randomSecret()
		}
		in.sim = comsim.NewServer(simOpts)
		ccfg.BaseURL, ccfg.TokenURL = in.sim.URL(), in.sim.TokenURL()
		ccfg.ClientID, ccfg.ClientSecret = simOpts.ClientID, simOpts.ClientSecret
		if in.embedded != nil {
			in.simContact = writeSimContact(cfg.DataDir, simContact{ccfg.BaseURL, ccfg.TokenURL, ccfg.ClientID, ccfg.ClientSecret}, logger)
		}
		if o.banner != nil {
			fmt.Fprintf(o.banner, "\n"+
				"  ***************************************************************\n"+
				"  *  COMJOBS_COM_BASE_URL is not set: using the built-in COM     *\n"+
				"  *  SIMULATOR at %-45s *\n"+
				"  *  No real Compute Ops Management job will be created.        *\n"+
				"  ***************************************************************\n\n", in.sim.URL())
		}
	}
	in.com, err = com.NewClient(ccfg, in.hc, logger, in.reg)
	if err != nil {
		return nil, fmt.Errorf("COM client: %w", err)
	}
	return in, nil
}

// Close releases everything openInfra made, in reverse order.
func (in *infra) Close() {
	if in.nc != nil {
		_ = in.nc.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !in.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		in.nc.Close()
	}
	if in.sim != nil {
		in.sim.Close()
	}
	if in.simContact != "" {
		_ = os.Remove(in.simContact)
	}
	if in.embedded != nil {
		in.embedded.Stop()
	}
	if in.unlock != nil {
		in.unlock()
	}
}

// lockDataDir takes an exclusive lock on DATA_DIR, so that two embedded
// servers never share one JetStream store.
func lockDataDir(dir string) (func(), error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("settings: COMJOBS_DATA_DIR: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("settings: COMJOBS_DATA_DIR: %s is in use by another comjobs (choose another COMJOBS_DATA_DIR, or set COMJOBS_NATS_URL to use that one's server)", dir)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func redactURL(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "REDACTED" + u[i:]
		}
	}
	return u
}

// readiness collects named checks for /readyz.
type readiness struct {
	mu     sync.Mutex
	checks map[string]func(context.Context) error
}

func (r *readiness) add(name string, f func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.checks == nil {
		r.checks = map[string]func(context.Context) error{}
	}
	r.checks[name] = f
}

func (r *readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), 3*time.Second)
	defer cancel()
	r.mu.Lock()
	checks := make(map[string]func(context.Context) error, len(r.checks))
	for k, v := range r.checks {
		checks[k] = v
	}
	r.mu.Unlock()
	var b strings.Builder
	ok := true
	for name, f := range checks {
		if err := f(ctx); err != nil {
			ok = false
			fmt.Fprintf(&b, "%s: %v\n", name, err)
		} else {
			fmt.Fprintf(&b, "%s: ok\n", name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	io.WriteString(w, b.String())
}

// serveHTTP runs the health, metrics and webhook listener until ctx ends.
func serveHTTP(ctx context.Context, addr string, mux *http.ServeMux, paths string, logger *slog.Logger, bound chan<- string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("settings: COMJOBS_HTTP_ADDR: listen %s: %w", addr, err)
	}
	if bound != nil {
		bound <- ln.Addr().String()
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("HTTP listening", "addr", ln.Addr().String(), "paths", paths)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	}
}

func newMux(reg *prometheus.Registry, ready http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("/readyz", ready)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// randomSecret makes a throwaway client secret for a simulator this process
// started, so even the simulator is not reachable with a well-known secret.
func randomSecret() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// simContact is how local commands reach the simulator `comjobs run`
// started: its address and its throwaway credentials.
type simContact struct {
	BaseURL      string `json:"baseUrl"`
	TokenURL     string `json:"tokenUrl"`
	ClientID     string `json:"clientId"`
	ClientSecret string `json:"clientSecret"`
}

const simContactFile = "simulator.json"

func writeSimContact(dataDir string, sc simContact, logger *slog.Logger) string {
	path := filepath.Join(dataDir, simContactFile)
	b, _ := json.Marshal(sc)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		logger.Warn("cannot record the simulator's address for local commands", "path", path, "err", err)
		return ""
	}
	return path
}

func readSimContact(dataDir string) (simContact, bool) {
	var sc simContact
	b, err := os.ReadFile(filepath.Join(dataDir, simContactFile))
	if err != nil || json.Unmarshal(b, &sc) != nil || sc.BaseURL == "" {
		return sc, false
	}
	return sc, true
}
