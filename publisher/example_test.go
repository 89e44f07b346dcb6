package publisher_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
)

// ExamplePublisher_Submit shows an upstream system's whole use: build a
// request, submit it (a second submit of the same identity is a duplicate),
// see a bad one refused locally, and wait for the job's terminal event —
// here published by hand where comjobs' tracker would.
func ExamplePublisher_Submit() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An embedded JetStream server with comjobs' streams, as `comjobs run` has.
	dir, err := os.MkdirTemp("", "comjobs-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsrv.Start(natsrv.Options{Port: -1, StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Stop()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	if _, err := topology.Ensure(ctx, js, topology.Options{Replicas: 1}); err != nil {
		panic(err)
	}

	p := publisher.New(js, nil)
	const source, id = "//ci.example.net/pipelines/ops", "change-1234"
	req, err := publisher.NewRequest(source, id, schemas.Request{
		Template:    "Group Apply Server Setting",
		ResourceURI: "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860",
		Data:        map[string]any{"redfish_subsystem": "BIOS", "batch_size": 5},
		Labels:      map[string]string{"ticket": "CHG-1234"},
	})
	if err != nil {
		panic(err)
	}
	res, err := p.Submit(ctx, req)
	if err != nil {
		panic(err)
	}
	fmt.Println("submitted on", res.Subject, "duplicate:", res.Duplicate)
	res, err = p.Submit(ctx, req)
	if err != nil {
		panic(err)
	}
	fmt.Println("submitted again, duplicate:", res.Duplicate)

	bad, _ := publisher.NewRequest(source, "change-1235", schemas.Request{
		Template:    "Group Apply Server Setting",
		ResourceURI: "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860",
		Data:        map[string]any{"redfish_subsystem": "BIOS", "batch_size": 50},
	})
	var rej *schemas.Rejection
	if _, err := p.Submit(ctx, bad); errors.As(err, &rej) {
		fmt.Println("refused:", rej.Reason, rej.Message)
	}

	// What the tracker would publish once the job completes.
	now := time.Now().UTC()
	done, err := publisher.NewEvent(schemas.TypeStateChanged, "comjobs/tracker", "job-1/3", "job-1", schemas.JobEvent{
		JobID: "job-1", JobURI: "/compute-ops-mgmt/v1/jobs/job-1", State: schemas.StateComplete,
		ResultCode: func() *string { s := schemas.ResultSuccess; return &s }(), Terminal: true, Generation: 3,
		Template:  schemas.TemplateRef{ID: "e0ac7ae6-d8b5-4b3c-9e0a-4f1fa0a0c5a8", Name: "Group Apply Server Setting", Slug: "group-apply-server-setting"},
		Resource:  schemas.Resource{Type: "compute-ops-mgmt/group", ID: "8a3a2a46-0102-48e2-bdd9-a29ee6909860"},
		CreatedAt: now, UpdatedAt: now, ObservedAt: now,
	}, publisher.RequestRef{ID: id, Source: source})
	if err != nil {
		panic(err)
	}
	if _, err := p.Publish(ctx, schemas.StateSubject(schemas.StateComplete, "group-apply-server-setting"), done, done.ID()); err != nil {
		panic(err)
	}

	final, err := p.Wait(ctx, source, id, func(e event.Event) { fmt.Println("event:", e.Type(), e.ID()) })
	if err != nil {
		panic(err)
	}
	var job schemas.JobEvent
	if err := final.DataAs(&job); err != nil {
		panic(err)
	}
	fmt.Println("final state:", job.State, *job.ResultCode)
	// Output:
	// submitted on comjobs.requests.group-apply-server-setting duplicate: false
	// submitted again, duplicate: true
	// refused: invalid-data data.batch_size: must be <= 20
	// event: comjobs.job.state-changed job-1/3
	// final state: COMPLETE SUCCESS
}
