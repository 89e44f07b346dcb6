// Package console is the notifier's sink for when no Slack setting is
// given: it prints each message readably to an io.Writer (the demo's
// terminal), one block of lines per message. It never fails except when the
// writer does.
package console

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/comjobs/comjobs/notify"
)

// Sink prints messages. It is safe for concurrent use; each message is
// written in one Write call.
type Sink struct {
	mu sync.Mutex
	w  io.Writer
}

var (
	_ notify.Sink      = (*Sink)(nil)
	_ notify.Describer = (*Sink)(nil)
)

// New returns a sink printing to w.
func New(w io.Writer) *Sink { return &Sink{w: w} }

// Describe implements notify.Describer: the console needs no pacing.
func (s *Sink) Describe() notify.SinkInfo { return notify.SinkInfo{Name: "console", Unpaced: true} }

// Notify prints m. Control characters in event text are replaced so a
// label cannot move the cursor or fake another message.
func (s *Sink) Notify(_ context.Context, m notify.Message) (notify.Receipt, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s — %s", m.Mark, clean(m.Title), clean(m.Subject))
	if m.Channel != "" {
		fmt.Fprintf(&b, "  [%s]", clean(m.Channel))
	}
	if m.ThreadTS != "" {
		b.WriteString("  (reply)")
	}
	b.WriteByte('\n')
	width := 0
	for _, f := range m.Fields {
		width = max(width, len(f.Name))
	}
	for _, f := range m.Fields {
		fmt.Fprintf(&b, "    %-*s  %s\n", width, f.Name, clean(f.Value))
	}
	for _, l := range m.Lines {
		fmt.Fprintf(&b, "    %s\n", clean(l))
	}
	if m.Link != "" {
		fmt.Fprintf(&b, "    %s\n", m.Link)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := io.WriteString(s.w, b.String()); err != nil {
		return notify.Receipt{}, &notify.Error{Class: notify.Transient, Reason: "write", Unsent: true, Err: err}
	}
	return notify.Receipt{Channel: m.Channel}, nil
}

func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
}
