// Package natstest starts what a test of a comjobs role needs from NATS: an
// embedded JetStream server in the test's temporary directory, a
// connection, and the topology (streams, buckets, durables) — the way
// net/http/httptest starts a server. Everything is stopped by t.Cleanup.
package natstest

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/topology"
)

// Env is a running test server with a connection to it.
type Env struct {
	Server *natsrv.Server
	URL    string
	Conn   *nats.Conn
	JS     jetstream.JetStream
}

// Start starts an embedded JetStream server on a free loopback port,
// connects to it and creates the topology with one replica. It fails the
// test on any error.
func Start(t testing.TB) *Env {
	t.Helper()
	srv, err := natsrv.Start(natsrv.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topology.Ensure(t.Context(), js, topology.Options{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	return &Env{Server: srv, URL: srv.ClientURL(), Conn: nc, JS: js}
}
