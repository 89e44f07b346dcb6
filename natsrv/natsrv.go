// Package natsrv starts embedded NATS JetStream servers: the single server
// that `comjobs run` starts when no NATS URL is set, and the clustered
// servers that the chaos tests restart under load. Each server keeps its
// JetStream data in its own store directory, so a restart finds it again.
package natsrv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options describe one embedded server.
type Options struct {
	// Name is the server's name; required and unique within a cluster.
	Name string
	// Host and Port are the client listener. Port -1 picks a free port
	// (nats-server's 0 means 4222).
	Host string
	Port int
	// StoreDir holds JetStream data. Required.
	StoreDir string
	// Cluster settings: ClusterName non-empty enables clustering on
	// ClusterPort, with Routes to the other members (nats-route://host:port).
	ClusterName string
	ClusterPort int
	Routes      []string
	// ReadyTimeout bounds the wait for the listener (default 10s).
	ReadyTimeout time.Duration
	// Logger, when set, receives the server's notices and errors.
	Logger *slog.Logger
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server
	opts Options
}

// Start starts a server and waits until it accepts connections.
func Start(o Options) (*Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("natsrv: StoreDir is required")
	}
	if o.Name == "" {
		o.Name = "comjobs"
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	so := &server.Options{
		ServerName:         o.Name,
		Host:               o.Host,
		Port:               o.Port,
		JetStream:          true,
		StoreDir:           o.StoreDir,
		NoSigs:             true,
		NoLog:              o.Logger == nil,
		MaxPayload:         1 << 20,
		JetStreamMaxMemory: 256 << 20,
	}
	if o.ClusterName != "" {
		so.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("natsrv: route %q: %w", r, err)
			}
			so.Routes = append(so.Routes, u)
		}
	}
	s, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("natsrv: new server %s: %w", o.Name, err)
	}
	if o.Logger != nil {
		s.SetLoggerV2(&slogAdapter{l: o.Logger.With("component", "nats-server", "server", o.Name)}, false, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(o.ReadyTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("natsrv: server %s not ready within %s", o.Name, o.ReadyTimeout)
	}
	return &Server{Server: s, opts: o}, nil
}

// Options returns the options the server was started with (with defaults
// filled in and the actual client port), so it can be restarted alike.
func (s *Server) Options() Options {
	o := s.opts
	if a, ok := s.Addr().(*net.TCPAddr); ok {
		o.Port = a.Port
	}
	return o
}

// Stop shuts the server down and waits until it has.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Cluster is a set of clustered embedded servers on loopback.
type Cluster struct {
	Servers []*Server
	opts    []Options
}

// StartCluster starts n clustered servers named <name>-0..n-1 with stores
// under dir/<server>, and waits until JetStream has a meta leader (streams
// created before that hang).
func StartCluster(ctx context.Context, name string, n int, dir string, logger *slog.Logger) (*Cluster, error) {
	clientPorts, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	clusterPorts, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	var routes []string
	for _, p := range clusterPorts {
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(p))
	}
	c := &Cluster{}
	for i := 0; i < n; i++ {
		sn := fmt.Sprintf("%s-%d", name, i)
		c.opts = append(c.opts, Options{
			Name: sn, Host: "127.0.0.1", Port: clientPorts[i], StoreDir: dir + "/" + sn,
			ClusterName: name, ClusterPort: clusterPorts[i], Routes: routes, Logger: logger,
		})
	}
	// Start all concurrently: each waits for routes to form.
	type res struct {
		i   int
		s   *Server
		err error
	}
	ch := make(chan res, n)
	for i := range c.opts {
		go func(i int) {
			s, err := Start(c.opts[i])
			ch <- res{i, s, err}
		}(i)
	}
	c.Servers = make([]*Server, n)
	var errs []error
	for range c.opts {
		r := <-ch
		c.Servers[r.i] = r.s
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		c.Shutdown()
		return nil, err
	}
	if err := c.WaitJetStream(ctx); err != nil {
		c.Shutdown()
		return nil, err
	}
	if err := c.waitPeers(ctx, n); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

// waitPeers waits until a stream with n replicas can be placed, i.e. every
// member counts as an online JetStream peer (a meta leader alone is not
// enough: the first R3 stream would fail with "no suitable peers").
func (c *Cluster) waitPeers(ctx context.Context, n int) error {
	nc, err := nats.Connect(c.URLs())
	if err != nil {
		return fmt.Errorf("natsrv: connect: %w", err)
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.MaxWait(2 * time.Second))
	if err != nil {
		return fmt.Errorf("natsrv: jetstream: %w", err)
	}
	const probe = "NATSRV_PEER_PROBE"
	for {
		_, err = js.AddStream(&nats.StreamConfig{Name: probe, Subjects: []string{"natsrv.peer.probe"}, Replicas: n, Storage: nats.MemoryStorage})
		if err == nil {
			return js.DeleteStream(probe)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsrv: %d JetStream peers not online: %w (last: %v)", n, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// URLs returns the client URLs of all members, comma-separated, as nats.Connect takes them.
func (c *Cluster) URLs() string {
	var s string
	for i, o := range c.opts {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("nats://%s:%d", o.Host, o.Port)
	}
	return s
}

// Restart stops member i (if running) and starts it again on the same ports
// and store.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if s := c.Servers[i]; s != nil {
		s.Stop()
	}
	s, err := Start(c.opts[i])
	if err != nil {
		return err
	}
	c.Servers[i] = s
	return c.WaitJetStream(ctx)
}

// Stop stops member i without restarting it.
func (c *Cluster) Stop(i int) {
	if s := c.Servers[i]; s != nil {
		s.Stop()
		c.Servers[i] = nil
	}
}

// Shutdown stops every member.
func (c *Cluster) Shutdown() {
	for i := range c.Servers {
		c.Stop(i)
	}
}

// WaitJetStream waits until the cluster's JetStream answers account info,
// which needs an elected meta leader.
func (c *Cluster) WaitJetStream(ctx context.Context) error {
	return WaitJetStream(ctx, c.URLs())
}

// WaitJetStream connects to urls and waits until JetStream answers.
func WaitJetStream(ctx context.Context, urls string) error {
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		return fmt.Errorf("natsrv: connect %s: %w", urls, err)
	}
	defer nc.Close()
	for {
		js, err := nc.JetStream(nats.MaxWait(time.Second))
		if err == nil {
			if _, err = js.AccountInfo(); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsrv: JetStream not ready: %w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("natsrv: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// slogAdapter routes nats-server's logger to slog.
type slogAdapter struct{ l *slog.Logger }

func (a *slogAdapter) Noticef(f string, v ...any) { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Warnf(f string, v ...any)   { a.l.Warn(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Fatalf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Errorf(f string, v ...any)  { a.l.Error(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Debugf(f string, v ...any)  { a.l.Debug(fmt.Sprintf(f, v...)) }
func (a *slogAdapter) Tracef(f string, v ...any)  {}
