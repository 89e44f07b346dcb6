// Package requestcases reads request-case files: the shared cases of the
// workspace (shared/cases/requests.jsonl, see its README) and the project's
// own corpora in the same format. Each line is one NATS message — subject,
// headers, and either data (JSON, sent as the body) or body (raw text) — with
// the outcome that must follow. Every test that replays cases reads them
// through this package, so the format is parsed one way.
package requestcases

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"
)

// Case is one line of a case file.
type Case struct {
	Name    string            `json:"name"`
	Subject string            `json:"subject"`
	Headers map[string]string `json:"headers"`
	// Data is the body as JSON; Body, when set, is the raw body instead.
	Data   json.RawMessage `json:"data"`
	Body   *string         `json:"body"`
	Expect Expect          `json:"expect"`
}

// Expect is what must follow a case.
type Expect struct {
	// Outcome is submitted, rejected or duplicate.
	Outcome string `json:"outcome"`
	// Reason is the rejection reason, for rejected.
	Reason string `json:"reason"`
	// Message, in the project's own corpora, is a prefix the rejection's
	// message must have.
	Message string `json:"message,omitempty"`
}

// Load reads a case file. Blank lines are skipped; any other line that does
// not parse is an error naming the file and line.
func Load(path string) ([]Case, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Case
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var c Case
		if err := json.Unmarshal(line, &c); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no cases", path)
	}
	return out, nil
}

// SharedPath returns the workspace's shared cases file
// (<module root>/../shared/cases/requests.jsonl) when it exists. The module
// root is found by walking up from the working directory to go.mod.
func SharedPath() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "..", "shared", "cases", "requests.jsonl")
			if _, err := os.Stat(p); err == nil {
				return p, true
			}
			return "", false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// SharedOr returns the shared cases file when the workspace has it, else
// fallback (a package's own copy, so a clone alone still tests these kinds).
func SharedOr(fallback string) string {
	if p, ok := SharedPath(); ok {
		return p
	}
	return fallback
}

// Msg builds the case's NATS message. Header names are kept as written (not
// canonicalised), as a publisher may send them in any case.
func (c Case) Msg() *nats.Msg {
	m := nats.NewMsg(c.Subject)
	for k, v := range c.Headers {
		m.Header[k] = []string{v}
	}
	if c.Body != nil {
		m.Data = []byte(*c.Body)
	} else {
		m.Data = c.Data
	}
	return m
}

// Identity returns the case's CloudEvent (source, id): from the ce- headers,
// or from the body in structured mode. Either may be empty.
func (c Case) Identity() (source, id string) {
	source, id = c.Headers["ce-source"], c.Headers["ce-id"]
	if source != "" || id != "" {
		return source, id
	}
	var s struct{ Source, ID string }
	if err := json.Unmarshal(c.Msg().Data, &s); err != nil {
		return "", ""
	}
	return s.Source, s.ID
}
