package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/schemas"
)

// maxDeliveriesAdvisory is JetStream's advisory for a message that reached
// the durable's MaxDeliver; JetStream then leaves it in the stream.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// subscribeAdvisories listens, as one queue group across replicas, for the
// MAX_DELIVERIES advisories of the durable.
func (c *Consumer) subscribeAdvisories() (<-chan *nats.Msg, func(), error) {
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + c.cfg.Stream + "." + c.cfg.Durable
	ch := make(chan *nats.Msg, 64)
	sub, err := c.d.JS.Conn().ChanQueueSubscribe(subject, "comjobs-consumer-advisories", ch)
	if err != nil {
		return nil, nil, fmt.Errorf("consumer: subscribe %s: %w", subject, err)
	}
	var once sync.Once
	return ch, func() { once.Do(func() { _ = sub.Unsubscribe() }) }, nil
}

// serveAdvisories dead-letters what the advisories name until ctx ends.
func (c *Consumer) serveAdvisories(ctx, workCtx context.Context, s jetstream.Stream, ch <-chan *nats.Msg) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			var a maxDeliveriesAdvisory
			if err := json.Unmarshal(m.Data, &a); err != nil || a.StreamSeq == 0 {
				c.log.Warn("unreadable MAX_DELIVERIES advisory", "err", err)
				continue
			}
			if err := c.exhausted(workCtx, s, a); err != nil {
				c.log.Error("could not dead-letter a message past MaxDeliver; it stays in the stream", "seq", a.StreamSeq, "err", err)
			}
		}
	}
}

// exhausted finishes a message JetStream will not deliver again: a request
// already done is only removed; otherwise it is rejected with
// retries-exhausted, dead-lettered, and removed.
func (c *Consumer) exhausted(ctx context.Context, s jetstream.Stream, a maxDeliveriesAdvisory) error {
	raw, err := s.GetMsg(ctx, a.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // handled (acked or termed) after all
	}
	if err != nil {
		return fmt.Errorf("read message %d: %w", a.StreamSeq, err)
	}
	r := &request{delivery: delivery{subject: raw.Subject, header: raw.Header, data: raw.Data, seq: a.StreamSeq, delivered: a.Deliveries},
		log: c.log.With("seq", a.StreamSeq, "subject", raw.Subject, "advisory", "max-deliveries")}
	decodeErr := c.identify(r)
	le, rev, err := c.ledger.get(ctx, r.key)
	if err != nil {
		return err
	}
	switch {
	case le != nil && (le.State == stateSubmitted || le.State == stateRejected):
	case le != nil && le.State == stateCreated:
		if err := c.publishSubmitted(ctx, r, le, rev); err != nil {
			return err
		}
	default:
		var rej *schemas.Rejection
		if decodeErr == nil {
			if verr := c.resolve(r, le); verr != nil {
				errors.As(verr, &rej)
			}
		} else {
			errors.As(decodeErr, &rej)
		}
		if rej == nil {
			rej = schemas.Reject(schemas.ReasonRetriesExhausted, "",
				"delivered %d times without an outcome", a.Deliveries)
		}
		if err := c.reject(ctx, r, rej, nil); err != nil {
			return err
		}
	}
	if err := s.DeleteMsg(ctx, a.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("remove message %d: %w", a.StreamSeq, err)
	}
	return nil
}
