package topology_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
)

func TestEnsureIdempotentAndKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := natsrv.Start(natsrv.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	err = topology.Check(ctx, js)
	var ce *topology.CheckError
	if !errors.As(err, &ce) || len(ce.Missing) != 10 || len(ce.Unanswered) != 0 || ce.Transient() {
		t.Fatalf("Check on an empty server: %v, want a CheckError naming everything as missing, not transient", err)
	}
	if !strings.Contains(err.Error(), "run `comjobs setup`") {
		t.Errorf("Check on an empty server says %q, want it to send the operator to comjobs setup", err)
	}
	rep, err := topology.Ensure(ctx, js, topology.Options{Replicas: 1})
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if len(rep) != 10 {
		t.Fatalf("report: want 10 lines, got %d: %v", len(rep), rep)
	}
	if _, err := js.Publish(ctx, schemas.RequestSubject("server-power-off"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	rep, err = topology.Ensure(ctx, js, topology.Options{Replicas: 1, EventsMaxAge: time.Hour})
	if err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	for _, l := range rep {
		if l[:7] != "updated" {
			t.Errorf("second Ensure: want only updates, got %q", l)
		}
	}
	st, _ := js.Stream(ctx, schemas.StreamRequests)
	info, _ := st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("Ensure lost data: %d msgs", info.State.Msgs)
	}
	if err := topology.Check(ctx, js); err != nil {
		t.Fatalf("Check after Ensure: %v", err)
	}
}

func TestEnsureReportsIncompatibleStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := natsrv.Start(natsrv.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	nc, _ := nats.Connect(s.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// An existing events stream with work-queue retention cannot be changed in place.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: schemas.StreamEvents, Subjects: []string{"comjobs.events.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	_, err = topology.Ensure(ctx, js, topology.Options{})
	if err == nil {
		t.Fatal("want an error for the incompatible stream")
	}
	if got := err.Error(); !strings.Contains(got, schemas.StreamEvents) {
		t.Fatalf("error should name the stream: %v", got)
	}
}

func TestClusterR3(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := natsrv.StartCluster(ctx, "topo", 3, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	nc, err := nats.Connect(c.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := topology.Ensure(ctx, js, topology.Options{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(ctx, schemas.StreamRequests)
	info, _ := st.Info(ctx)
	if info.Config.Replicas != 3 {
		t.Fatalf("replicas %d", info.Config.Replicas)
	}
	if err := c.Restart(ctx, 1); err != nil {
		t.Fatalf("restart member: %v", err)
	}
	if _, err := js.Publish(ctx, schemas.RequestSubject("x"), []byte(`{}`)); err != nil {
		t.Fatalf("publish after restart: %v", err)
	}

	// Two of three servers down: nothing is missing, JetStream just does
	// not answer. The check says so, and that it is worth waiting out.
	c.Stop(1)
	c.Stop(2)
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	err = topology.Check(short, js)
	var ce *topology.CheckError
	if !errors.As(err, &ce) || len(ce.Missing) != 0 || len(ce.Unanswered) == 0 || !ce.Transient() {
		t.Fatalf("Check without quorum: %v, want a transient CheckError with unanswered lookups only", err)
	}
	if strings.Contains(err.Error(), "comjobs setup") {
		t.Errorf("Check without quorum says %q: nothing is missing", err)
	}
}
