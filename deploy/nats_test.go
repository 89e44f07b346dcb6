package deploy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/deploy/natsauth"
	"github.com/comjobs/comjobs/topology"
)

// writeTLS writes a CA and a server certificate for localhost into dir and
// returns the paths of cert, key and CA.
func writeTLS(t *testing.T, dir string) (cert, key, ca string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "comjobs test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames:    []string{"localhost", "nats-1.nats.comjobs.svc", "nats-2.nats.comjobs.svc", "nats-3.nats.comjobs.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("tls.crt", "CERTIFICATE", srvDER), write("tls.key", "EC PRIVATE KEY", keyDER), write("ca.crt", "CERTIFICATE", caDER)
}

// authServer loads deploy/nats/nats-server.conf with auth.conf issued from
// permissions.json, checks the cluster settings, and starts it as a single
// node (routes dropped: one node is enough to check authorisation). It
// returns the server URL, the CA file and the issued artefacts' directory.
func authServer(t *testing.T) (url, caFile, authDir string, spec natsauth.Spec) {
	t.Helper()
	spec, err := natsauth.LoadSpec("nats/permissions.json")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := natsauth.LoadOrCreateKeys(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	issued, err := natsauth.Issue(spec, keys)
	if err != nil {
		t.Fatal(err)
	}
	authDir = t.TempDir()
	if err := issued.Write(authDir); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile("nats/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(authDir, "nats-server.conf")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key, ca := writeTLS(t, t.TempDir())
	t.Setenv("NATS_SERVER_NAME", "nats-1")
	t.Setenv("NATS_STORE_DIR", t.TempDir())
	t.Setenv("NATS_TLS_CERT", cert)
	t.Setenv("NATS_TLS_KEY", key)
	t.Setenv("NATS_TLS_CA", ca)

	opts, err := server.ProcessConfigFile(confPath)
	if err != nil {
		t.Fatalf("nats-server.conf: %v", err)
	}
	switch {
	case opts.ServerName != "nats-1", opts.Cluster.Name != "comjobs", len(opts.Routes) != 3,
		!opts.JetStream, len(opts.TrustedOperators) != 1, opts.SystemAccount == "",
		opts.TLSConfig == nil, opts.Cluster.TLSConfig == nil, opts.MaxPayload < 1<<20:
		t.Fatalf("nats-server.conf: unexpected options: name %q cluster %q routes %d js %v operators %d tls %v cluster tls %v max_payload %d",
			opts.ServerName, opts.Cluster.Name, len(opts.Routes), opts.JetStream, len(opts.TrustedOperators),
			opts.TLSConfig != nil, opts.Cluster.TLSConfig != nil, opts.MaxPayload)
	}

	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return s.ClientURL(), ca, authDir, spec
}

// violations collects the asynchronous permission errors of one connection.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) add(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

// waitFor waits until a violation mentioning subject arrives.
func (v *violations) waitFor(subject string) bool {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		v.mu.Lock()
		for _, e := range v.errs {
			if strings.Contains(e, `"`+subject+`"`) {
				v.mu.Unlock()
				return true
			}
		}
		v.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.errs...)
}

func connectAs(t *testing.T, url, ca, authDir, user string) (*nats.Conn, jetstream.JetStream, *violations) {
	t.Helper()
	v := &violations{}
	nc, err := nats.Connect(url,
		nats.UserCredentials(filepath.Join(authDir, "creds", user+".creds")),
		nats.RootCAs(ca),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { v.add(err) }),
	)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, v
}

// roleOp is one thing a role must be able to do, through the same nats.go
// calls the services make.
type roleOp struct {
	name string
	do   func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error
}

func fetchAndAck(stream, durable string, inspect func(context.Context, jetstream.JetStream, jetstream.Msg) error) roleOp {
	return roleOp{"fetch and ack " + stream + "/" + durable, func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		c, err := js.Consumer(ctx, stream, durable)
		if err != nil {
			return err
		}
		batch, err := c.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
		if err != nil {
			return err
		}
		msg, ok := <-batch.Messages()
		if !ok {
			return errors.New("no message delivered")
		}
		if err := msg.InProgress(); err != nil {
			return err
		}
		if inspect != nil {
			if err := inspect(ctx, js, msg); err != nil {
				return err
			}
		}
		return msg.DoubleAck(ctx)
	}}
}

func publish(subject string) roleOp {
	return roleOp{"publish " + subject, func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		_, err := js.Publish(ctx, subject, []byte(`{}`))
		return err
	}}
}

func subscribe(subject string) roleOp {
	return roleOp{"subscribe " + subject, func(_ context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
		sub, err := nc.SubscribeSync(subject)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		return nc.Flush()
	}}
}

func kvReadWrite(bucket string) roleOp {
	return roleOp{"kv read/write " + bucket, func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		rev, err := kv.Create(ctx, "probe", []byte("1"))
		if err != nil {
			return err
		}
		if _, err := kv.Update(ctx, "probe", []byte("2"), rev); err != nil {
			return err
		}
		if _, err := kv.Put(ctx, "probe", []byte("3")); err != nil {
			return err
		}
		if _, err := kv.Get(ctx, "probe"); err != nil {
			return err
		}
		if _, err := kv.ListKeys(ctx); err != nil {
			return err
		}
		return kv.Delete(ctx, "probe")
	}}
}

func kvRead(bucket string) roleOp {
	return roleOp{"kv read/watch " + bucket, func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		if _, err := kv.Get(ctx, "absent"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		w, err := kv.Watch(ctx, "pause")
		if err != nil {
			return err
		}
		defer w.Stop()
		select {
		case <-w.Updates(): // the initial nil marker: the watch consumer works
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
}

var topologyCheck = roleOp{"topology check", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
	return topology.Check(ctx, js)
}}

func TestNATSPermissions(t *testing.T) {
	url, ca, authDir, spec := authServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	// The admin user creates the topology and seeds one request and one
	// submitted event for the roles to take.
	_, adminJS, _ := connectAs(t, url, ca, authDir, "admin")
	if _, err := topology.Ensure(ctx, adminJS, topology.Options{Replicas: 1}); err != nil {
		t.Fatalf("admin: comjobs setup: %v", err)
	}
	for _, subj := range []string{"comjobs.requests.server-power-off", "comjobs.events.submitted.server-power-off"} {
		if _, err := adminJS.Publish(ctx, subj, []byte(`{}`)); err != nil {
			t.Fatalf("admin: publish %s: %v", subj, err)
		}
	}

	getRequest := func(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg) error {
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		s, err := js.Stream(ctx, "COMJOBS_REQUESTS")
		if err != nil {
			return err
		}
		_, err = s.GetMsg(ctx, md.Sequence.Stream)
		return err
	}

	tests := []struct {
		user      string
		allowed   []roleOp
		deniedPub []string
		deniedSub []string
	}{
		{
			user: "consumer",
			allowed: []roleOp{
				topologyCheck,
				fetchAndAck("COMJOBS_REQUESTS", "consumer", getRequest),
				kvReadWrite("comjobs-ledger"), kvReadWrite("comjobs-control"), kvRead("comjobs-control"),
				publish("comjobs.events.submitted.server-power-off"), publish("comjobs.events.rejected.unknown"),
				publish("comjobs.dlq.consumer.retries-exhausted"),
				subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.COMJOBS_REQUESTS.consumer"),
				subscribe("comjobs.control.>"),
			},
			deniedPub: []string{"comjobs.requests.server-power-off", "comjobs.events.running.server-power-off",
				"comjobs.dlq.notifier.x", "$KV.comjobs-jobs.x", "$JS.API.STREAM.DELETE.COMJOBS_REQUESTS",
				"$JS.API.CONSUMER.MSG.NEXT.COMJOBS_EVENTS.notifier"},
			deniedSub: []string{"comjobs.events.>", "comjobs.requests.>"},
		},
		{
			user: "tracker",
			allowed: []roleOp{
				topologyCheck,
				fetchAndAck("COMJOBS_EVENTS", "tracker", nil),
				kvReadWrite("comjobs-jobs"), kvReadWrite("comjobs-control"), kvRead("comjobs-ledger"),
				publish("comjobs.events.running.server-power-off"), publish("comjobs.events.overdue.server-power-off"),
				publish("comjobs.events.approval-pending.server-power-off"), publish("comjobs.dlq.tracker.invalid-event"),
				subscribe("comjobs.control.>"),
			},
			deniedPub: []string{"comjobs.events.submitted.server-power-off", "comjobs.events.rejected.unknown",
				"comjobs.requests.server-power-off", "$KV.comjobs-ledger.x", "$KV.comjobs-notified.x",
				"$JS.API.CONSUMER.MSG.NEXT.COMJOBS_REQUESTS.consumer", "$JS.API.STREAM.UPDATE.COMJOBS_EVENTS"},
			deniedSub: []string{"comjobs.requests.>"},
		},
		{
			user: "notifier",
			allowed: []roleOp{
				topologyCheck,
				fetchAndAck("COMJOBS_EVENTS", "notifier", nil),
				kvReadWrite("comjobs-notified"), kvRead("comjobs-control"),
				publish("comjobs.dlq.notifier.channel-not-found"),
				subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.COMJOBS_EVENTS.notifier"),
			},
			deniedPub: []string{"comjobs.events.complete.server-power-off", "comjobs.requests.server-power-off",
				"$KV.comjobs-control.pause", "$KV.comjobs-ledger.x", "$KV.comjobs-jobs.x", "comjobs.dlq.consumer.x",
				"$JS.API.CONSUMER.MSG.NEXT.COMJOBS_EVENTS.tracker", "$JS.API.STREAM.PURGE.COMJOBS_EVENTS"},
			deniedSub: []string{"comjobs.requests.>"},
		},
		{
			user:      "publisher-power-scheduler",
			allowed:   []roleOp{publish("comjobs.requests.server-power-off"), publish("comjobs.requests.server-restart")},
			deniedPub: []string{"comjobs.requests.server-firmware-update", "comjobs.events.submitted.x", "$JS.API.STREAM.INFO.COMJOBS_REQUESTS", "$KV.comjobs-ledger.x"},
			deniedSub: []string{"comjobs.requests.>", "comjobs.events.>"},
		},
		{
			user:      "publisher-firmware-portal",
			allowed:   []roleOp{publish("comjobs.requests.server-firmware-update"), publish("comjobs.requests.group-firmware-update")},
			deniedPub: []string{"comjobs.requests.server-power-off", "comjobs.requests.group-os-installation"},
		},
	}

	covered := map[string]bool{"admin": true}
	for _, tt := range tests {
		covered[tt.user] = true
		t.Run(tt.user, func(t *testing.T) {
			nc, js, v := connectAs(t, url, ca, authDir, tt.user)
			for _, op := range tt.allowed {
				opCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := op.do(opCtx, nc, js)
				cancel()
				if err != nil {
					t.Errorf("%s: %v (violations: %v)", op.name, err, v.all())
				}
			}
			if errs := v.all(); len(errs) > 0 {
				t.Fatalf("allowed operations caused permission errors: %v", errs)
			}
			for _, subj := range tt.deniedPub {
				if err := nc.Publish(subj, []byte(`{}`)); err != nil {
					t.Fatalf("publish %s: %v", subj, err)
				}
				if !v.waitFor(subj) {
					t.Errorf("publish to %s was not refused", subj)
				}
			}
			for _, subj := range tt.deniedSub {
				if _, err := nc.SubscribeSync(subj); err != nil {
					t.Fatalf("subscribe %s: %v", subj, err)
				}
				if !v.waitFor(subj) {
					t.Errorf("subscription to %s was not refused", subj)
				}
			}
		})
	}
	for _, u := range spec.Users {
		if !covered[u.Name] {
			t.Errorf("user %s in permissions.json has no case in this test", u.Name)
		}
	}
}
