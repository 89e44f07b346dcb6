package cenats

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// parseHeaderBlob turns "name: value" lines into a header, keeping names as
// written (so that any case is exercised).
func parseHeaderBlob(blob string) nats.Header {
	h := nats.Header{}
	for _, line := range strings.Split(blob, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		h[k] = append(h[k], strings.TrimPrefix(v, " "))
	}
	return h
}

// FuzzDecode checks that Decode never panics, and that whatever it accepts
// encodes again and decodes to the same event.
func FuzzDecode(f *testing.F) {
	f.Add("ce-specversion: 1.0\nce-id: 1\nce-source: /s\nce-type: t\ncontent-type: application/json", []byte(`{"template":"x"}`))
	f.Add("CE-SPECVERSION: 1.0\nCe-Id: a%20b\nce-source: //x/y\nce-type: t\nce-time: 2026-12-01T09:30:00Z\nce-note: %E2%82%AC", []byte(``))
	f.Add("content-type: application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}`))
	f.Add("content-type: application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAE="}`))
	f.Add("ce-specversion: 0.3\nce-id: %zz", []byte(`x`))
	f.Fuzz(func(t *testing.T, blob string, body []byte) {
		h := parseHeaderBlob(blob)
		e, err := Decode(h, body, DecodeOptions{})
		if err != nil {
			return
		}
		msg, err := Encode("s", e)
		if err != nil {
			t.Fatalf("accepted event does not encode: %v\n%v", err, e)
		}
		again, err := Decode(msg.Header, msg.Data, DecodeOptions{MaxSize: 1 << 30})
		if err != nil {
			t.Fatalf("encoded event does not decode: %v\nheaders %v", err, msg.Header)
		}
		if d := diffEvents(e, again); d != "" {
			t.Fatalf("round trip differs: %s", d)
		}
	})
}
