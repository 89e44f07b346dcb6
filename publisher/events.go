package publisher

import (
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/comjobs/comjobs/schemas"
)

// RequestRef names the request an event is about; its fields become the
// extensions requestid, requestsource and traceparent (each only when set).
type RequestRef struct {
	ID          string
	Source      string
	TraceParent string
}

// NewEvent builds an event comjobs publishes about a request: eventType is
// one of the schemas.Type* constants (its dataschema is set accordingly),
// source is comjobs/<role>, id is the event id (for job events
// <jobId>/<generation>, also its Nats-Msg-Id), subject is the COM job id
// ("" for none), data is marshalled as JSON, time is now. It fails for an
// unknown event type, data that does not marshal, or an invalid envelope.
func NewEvent(eventType, source, id, subject string, data any, req RequestRef) (event.Event, error) {
	ds, ok := schemas.DataSchema(eventType)
	if !ok {
		return event.Event{}, fmt.Errorf("new event %q: unknown event type %q", id, eventType)
	}
	e := event.New()
	e.SetID(id)
	e.SetSource(source)
	e.SetType(eventType)
	e.SetTime(time.Now().UTC())
	e.SetDataSchema(ds)
	if subject != "" {
		e.SetSubject(subject)
	}
	if req.ID != "" {
		e.SetExtension(schemas.ExtRequestID, req.ID)
	}
	if req.Source != "" {
		e.SetExtension(schemas.ExtRequestSource, req.Source)
	}
	if req.TraceParent != "" {
		e.SetExtension(schemas.ExtTraceParent, req.TraceParent)
	}
	if err := e.SetData(event.ApplicationJSON, data); err != nil {
		return event.Event{}, fmt.Errorf("new event %s %q: %w", eventType, id, err)
	}
	if err := e.Validate(); err != nil {
		return event.Event{}, fmt.Errorf("new event %s %q: %w", eventType, id, err)
	}
	return e, nil
}
