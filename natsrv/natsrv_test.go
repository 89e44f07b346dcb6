package natsrv_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/natsrv"
)

// TestRestartKeepsData: a server started again on the same store finds its
// streams and messages, as `comjobs run` does across restarts.
func TestRestartKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	s, err := natsrv.Start(natsrv.Options{Port: -1, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(url string) jetstream.JetStream {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js
	}
	js := publish(s.ClientURL())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "KEEP", Subjects: []string{"keep.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "keep.one", []byte("x")); err != nil {
		t.Fatal(err)
	}
	opts := s.Options()
	s.Stop()

	s2, err := natsrv.Start(opts)
	if err != nil {
		t.Fatalf("restart on the same store and port: %v", err)
	}
	defer s2.Stop()
	st, err := publish(s2.ClientURL()).Stream(ctx, "KEEP")
	if err != nil {
		t.Fatalf("stream lost across the restart: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("messages after the restart: %v %v", info, err)
	}
}

// TestStartNeedsAStore: a server without a store directory is refused.
func TestStartNeedsAStore(t *testing.T) {
	if _, err := natsrv.Start(natsrv.Options{Port: -1}); err == nil {
		t.Fatal("Start without StoreDir succeeded")
	}
}
