package cenats

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"

	"github.com/comjobs/comjobs/schemas"
)

// newEvent builds a valid event with the given attribute values.
func newEvent(t testing.TB, id, source, subject string, exts map[string]string, data []byte) event.Event {
	t.Helper()
	e := event.New()
	e.SetID(id)
	e.SetSource(source)
	e.SetType(schemas.TypeRequested)
	if subject != "" {
		e.SetSubject(subject)
	}
	e.SetTime(time.Date(2026, 12, 1, 9, 30, 0, 123456789, time.UTC))
	e.SetDataSchema("https://comjobs.dev/schemas/requested.v1.json")
	for k, v := range exts {
		e.SetExtension(k, v)
	}
	if data != nil {
		if err := e.SetData("application/json", data); err != nil {
			t.Fatal(err)
		}
		e.DataBase64 = false
	}
	if err := e.Validate(); err != nil {
		t.Fatalf("test event invalid: %v", err)
	}
	return e
}

// diffEvents describes how a and b differ in attributes, extensions (by
// their string form) and data, or returns "".
func diffEvents(a, b event.Event) string {
	var d []string
	cmp := func(name, x, y string) {
		if x != y {
			d = append(d, fmt.Sprintf("%s: %q != %q", name, x, y))
		}
	}
	cmp("specversion", a.SpecVersion(), b.SpecVersion())
	cmp("id", a.ID(), b.ID())
	cmp("source", a.Source(), b.Source())
	cmp("type", a.Type(), b.Type())
	cmp("subject", a.Subject(), b.Subject())
	cmp("dataschema", a.DataSchema(), b.DataSchema())
	cmp("datacontenttype", a.DataContentType(), b.DataContentType())
	if !a.Time().Equal(b.Time()) {
		d = append(d, fmt.Sprintf("time: %v != %v", a.Time(), b.Time()))
	}
	ext := func(e event.Event) string {
		var kv []string
		for k, v := range e.Extensions() {
			s, _ := types.Format(v)
			kv = append(kv, k+"="+s)
		}
		sort.Strings(kv)
		return strings.Join(kv, ",")
	}
	cmp("extensions", ext(a), ext(b))
	if !bytes.Equal(a.Data(), b.Data()) {
		d = append(d, fmt.Sprintf("data: %q != %q", a.Data(), b.Data()))
	}
	return strings.Join(d, "; ")
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		source  string
		subject string
		exts    map[string]string
		data    []byte
	}{
		{name: "plain", id: "abc-123", source: "//ci.example.net/pipelines/ops", data: []byte(`{"template":"server-power-off"}`)},
		{name: "spaces", id: "id with spaces", source: "/src", subject: "a subject with spaces", exts: map[string]string{"note": " leading and trailing "}},
		{name: "percent", id: "100%", source: "/a%20b", subject: "%41 is not A", exts: map[string]string{"pct": "%%%"}},
		{name: "quotes", id: `say "hi"`, source: "/q", subject: `"quoted"`, exts: map[string]string{"quote": `'single' "double"`}},
		{name: "non-ASCII", id: "Grüße-日本-🚀", source: "/ünïcode", subject: "Ωmega", exts: map[string]string{"label": "café — naïve"}},
		{name: "no data", id: "empty", source: "/e"},
		{name: "binary-looking data", id: "bin", source: "/b", data: []byte("{\"x\":\"\\u0000\xe2\x82\xac\"}")},
		{name: "trace context", id: "t", source: "comjobs/consumer", exts: map[string]string{
			schemas.ExtRequestID: "req 1", schemas.ExtRequestSource: "//up stream", schemas.ExtTraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := newEvent(t, tt.id, tt.source, tt.subject, tt.exts, tt.data)
			msg, err := Encode("comjobs.requests.x", in)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			for k, vs := range msg.Header {
				for _, v := range vs {
					for i := 0; i < len(v); i++ {
						if v[i] != '%' && mustEscape(v[i]) {
							t.Errorf("header %s=%q holds unescaped byte %q", k, v, v[i])
						}
					}
				}
			}
			if got, want := msg.Header[HeaderContentType], msg.Header[hDataContentType]; tt.data != nil && (len(got) != 1 || len(want) != 1 || got[0] != want[0]) {
				t.Errorf("content-type %q and ce-datacontenttype %q should both be set and agree", got, want)
			}
			if _, ok := msg.Header["Nats-Msg-Id"]; ok {
				t.Errorf("Encode set Nats-Msg-Id")
			}
			out, err := Decode(msg.Header, msg.Data, DecodeOptions{})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if d := diffEvents(in, out); d != "" {
				t.Errorf("binary round trip differs: %s", d)
			}

			// sdk-go's structured JSON of the same event decodes to the same event.
			js, err := in.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			st, err := Decode(nats.Header{"Content-Type": {"application/cloudevents+json; charset=utf-8"}}, js, DecodeOptions{})
			if err != nil {
				t.Fatalf("Decode structured: %v", err)
			}
			if d := diffEvents(out, st); d != "" {
				t.Errorf("binary and structured decodings differ: %s", d)
			}
		})
	}
}

func TestEncodeWireFormat(t *testing.T) {
	e := newEvent(t, "a b", "/s", "", map[string]string{"x": `"ü%"`}, []byte(`{}`))
	msg, err := Encode("subj", e)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ce-specversion":     "1.0",
		"ce-id":              "a%20b",
		"ce-source":          "/s",
		"ce-type":            schemas.TypeRequested,
		"ce-time":            "2026-12-01T09:30:00.123456789Z",
		"ce-dataschema":      "https://comjobs.dev/schemas/requested.v1.json",
		"ce-datacontenttype": "application/json",
		"content-type":       "application/json",
		"ce-x":               "%22%C3%BC%25%22",
	}
	if len(msg.Header) != len(want) {
		t.Errorf("headers = %v, want %d of them", msg.Header, len(want))
	}
	for k, v := range want {
		if got := msg.Header[k]; len(got) != 1 || got[0] != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if msg.Subject != "subj" || string(msg.Data) != `{}` {
		t.Errorf("subject %q body %q", msg.Subject, msg.Data)
	}
}

func TestEncodeRefusesInvalidEvents(t *testing.T) {
	noID := event.New()
	noID.SetSource("/s")
	noID.SetType("t")
	v03 := event.New(event.CloudEventsVersionV03)
	v03.SetID("i")
	v03.SetSource("/s")
	v03.SetType("t")
	for name, e := range map[string]event.Event{"missing id": noID, "spec 0.3": v03, "zero": {}} {
		t.Run(name, func(t *testing.T) {
			if _, err := Encode("s", e); err == nil {
				t.Fatal("Encode accepted an invalid event")
			}
		})
	}
}

func TestDecodeHeaderCaseAndContentType(t *testing.T) {
	body := []byte(`{"a":1}`)
	tests := []struct {
		name   string
		header nats.Header
		wantCT string
	}{
		{name: "lower case", header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"1"}, "ce-source": {"/s"}, "ce-type": {"t"}, "content-type": {"application/json"}}, wantCT: "application/json"},
		{name: "canonical MIME case", header: nats.Header{"Ce-Specversion": {"1.0"}, "Ce-Id": {"1"}, "Ce-Source": {"/s"}, "Ce-Type": {"t"}, "Content-Type": {"application/json"}}, wantCT: "application/json"},
		{name: "upper case", header: nats.Header{"CE-SPECVERSION": {"1.0"}, "CE-ID": {"1"}, "CE-SOURCE": {"/s"}, "CE-TYPE": {"t"}, "CE-DATACONTENTTYPE": {"application/json"}}, wantCT: "application/json"},
		{name: "only ce-datacontenttype", header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"1"}, "ce-source": {"/s"}, "ce-type": {"t"}, "ce-datacontenttype": {"application/json"}}, wantCT: "application/json"},
		{name: "both, parameters differ", header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"1"}, "ce-source": {"/s"}, "ce-type": {"t"}, "ce-datacontenttype": {"application/json"}, "content-type": {"application/json; charset=utf-8"}}, wantCT: "application/json"},
		{name: "no content type", header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"1"}, "ce-source": {"/s"}, "ce-type": {"t"}}, wantCT: ""},
		{name: "structured, upper-case header", header: nats.Header{"CONTENT-TYPE": {"Application/CloudEvents+JSON"}}, wantCT: "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := body
			if strings.HasPrefix(tt.name, "structured") {
				b = []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":{"a":1}}`)
			}
			e, err := Decode(tt.header, b, DecodeOptions{})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e.ID() != "1" || e.Source() != "/s" || e.Type() != "t" || e.DataContentType() != tt.wantCT || string(e.Data()) != `{"a":1}` {
				t.Errorf("decoded %v", e)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	valid := func() nats.Header {
		return nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"1"}, "ce-source": {"/s"}, "ce-type": {"t"}, "content-type": {"application/json"}}
	}
	with := func(k, v string) nats.Header {
		h := valid()
		if v == "" {
			delete(h, k)
		} else {
			h[k] = []string{v}
		}
		return h
	}
	structured := nats.Header{"content-type": {MediaTypeStructured}}
	tests := []struct {
		name   string
		header nats.Header
		body   string
		max    int
		want   string // expected prefix of the message
	}{
		{name: "wrong specversion", header: with("ce-specversion", "0.3"), want: "ce-specversion: must be 1.0, got 0.3"},
		{name: "missing specversion", header: with("ce-specversion", ""), want: "ce-specversion: required"},
		{name: "missing id", header: with("ce-id", ""), want: "ce-id: required"},
		{name: "empty id", header: with("ce-id", "%20"), want: "ce-id: required"},
		{name: "missing source", header: with("ce-source", ""), want: "ce-source: required"},
		{name: "missing type", header: with("ce-type", ""), want: "ce-type: required"},
		{name: "time not RFC 3339", header: with("ce-time", "yesterday"), want: "ce-time: must be an RFC 3339 timestamp"},
		{name: "time without zone", header: with("ce-time", "2026-12-01T09:30:00"), want: "ce-time: must be an RFC 3339 timestamp"},
		{name: "bad percent escape", header: with("ce-id", "a%zz"), want: "ce-id: invalid percent-encoding"},
		{name: "truncated percent escape", header: with("ce-id", "a%4"), want: "ce-id: invalid percent-encoding"},
		{name: "invalid UTF-8", header: with("ce-id", "%C3%28"), want: "ce-id: not valid UTF-8"},
		{name: "bad extension name", header: with("ce-trace_parent", "x"), want: "ce-trace_parent: attribute names"},
		{name: "bad dataschema", header: with("ce-dataschema", "not a uri"), want: "ce-dataschema:"},
		{name: "attribute twice in different case", header: func() nats.Header { h := valid(); h["CE-ID"] = []string{"2"}; return h }(), want: "ce-id: must appear once"},
		{name: "attribute with two values", header: func() nats.Header { h := valid(); h["ce-id"] = []string{"1", "2"}; return h }(), want: "ce-id: must appear once"},
		{name: "content types disagree", header: with("ce-datacontenttype", "text/plain"), want: "ce-datacontenttype:"},
		{name: "too big", header: valid(), body: strings.Repeat("x", 200), max: 100, want: "event of"},
		{name: "too big by default", header: valid(), body: strings.Repeat("x", DefaultMaxSize), want: "event of"},
		{name: "structured not JSON", header: structured, body: `{"specversion":`, want: "structured event: not a JSON object"},
		{name: "structured 0.3", header: structured, body: `{"specversion":"0.3","id":"1","source":"/s","type":"t"}`, want: "specversion: must be 1.0, got 0.3"},
		{name: "structured missing id", header: structured, body: `{"specversion":"1.0","source":"/s","type":"t"}`, want: "id: required"},
		{name: "structured empty type", header: structured, body: `{"specversion":"1.0","id":"1","source":"/s","type":""}`, want: "type: required"},
		{name: "structured bad time", header: structured, body: `{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"noon"}`, want: "time: must be an RFC 3339 timestamp"},
		{name: "structured array", header: structured, body: `[]`, want: "structured event: not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.header, []byte(tt.body), DecodeOptions{MaxSize: tt.max})
			var rej *schemas.Rejection
			if !errors.As(err, &rej) {
				t.Fatalf("err = %v, want a *schemas.Rejection", err)
			}
			if rej.Reason != schemas.ReasonInvalidEvent {
				t.Errorf("reason = %q, want %q", rej.Reason, schemas.ReasonInvalidEvent)
			}
			if !strings.HasPrefix(rej.Message, tt.want) {
				t.Errorf("message = %q, want prefix %q", rej.Message, tt.want)
			}
		})
	}
}

func TestPercentCoding(t *testing.T) {
	tests := []struct{ in, enc string }{
		{"", ""},
		{"plain-ASCII_~!", "plain-ASCII_~!"},
		{"a b", "a%20b"},
		{`"`, "%22"},
		{"%", "%25"},
		{"€", "%E2%82%AC"},
		{"\x00\n\x7f", "%00%0A%7F"},
	}
	for _, tt := range tests {
		t.Run(tt.enc, func(t *testing.T) {
			if got := percentEncode(tt.in); got != tt.enc {
				t.Errorf("percentEncode(%q) = %q, want %q", tt.in, got, tt.enc)
			}
			got, err := percentDecode(tt.enc)
			if err != nil || got != tt.in {
				t.Errorf("percentDecode(%q) = %q, %v; want %q", tt.enc, got, err, tt.in)
			}
		})
	}
	if got, err := percentDecode("%e2%82%ac"); err != nil || got != "€" {
		t.Errorf("lower-case hex: %q, %v", got, err)
	}
}

// TestControlCharactersRefused: the CloudEvents type system forbids
// U+0000-U+001F and U+007F-U+009F in strings, on the way in and out.
func TestControlCharactersRefused(t *testing.T) {
	tests := []struct {
		name, id, subject string
		exts              map[string]string
	}{
		{"tab in id", "tab\there", "", nil},
		{"NUL in subject", "x", "a\x00b", nil},
		{"bell in extension", "x", "", map[string]string{"ctl": "bell\x07"}},
		{"C1 control in extension", "x", "", map[string]string{"ctl": "a\u0085b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEvent(t, tt.id, "/c", tt.subject, tt.exts, nil)
			if _, err := Encode("comjobs.requests.x", e); err == nil {
				t.Error("Encode accepted a control character")
			}
			h := nats.Header{"ce-specversion": {"1.0"}, "ce-id": {percentEncode(tt.id)}, "ce-source": {"/c"}, "ce-type": {"comjobs.job.requested"}}
			if tt.subject != "" {
				h["ce-subject"] = []string{percentEncode(tt.subject)}
			}
			for k, v := range tt.exts {
				h["ce-"+k] = []string{percentEncode(v)}
			}
			_, err := Decode(h, nil, DecodeOptions{})
			var rej *schemas.Rejection
			if !errors.As(err, &rej) || rej.Reason != schemas.ReasonInvalidEvent || !strings.Contains(rej.Message, "control character") {
				t.Errorf("Decode: want an invalid-event rejection naming the control character, got %v", err)
			}
		})
	}
}

// TestEncodeHeaderValuesIndependent: Encode's header values share one
// backing array; adding a value to one header (as nats.Header.Add does)
// must leave every other header as it was.
func TestEncodeHeaderValuesIndependent(t *testing.T) {
	e := newEvent(t, "id-1", "//src", "subj", map[string]string{"requestid": "r1", "requestsource": "//up"}, []byte(`{}`))
	m, err := Encode("x.y", e)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string][]string{}
	for k, v := range m.Header {
		before[k] = append([]string(nil), v...)
	}
	for k := range before {
		m.Header.Add(k, "extra")
		for other, want := range before {
			got := m.Header[other]
			if other == k {
				want = append(append([]string(nil), want...), "extra")
			}
			if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("after adding to %s, %s is %q, want %q", k, other, got, want)
			}
		}
		m.Header[k] = m.Header[k][:1]
	}
}
