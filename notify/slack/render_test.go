package slack

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comjobs/comjobs/notify"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json")

func jobFields(result, status string, labels string) []notify.Field {
	f := []notify.Field{
		{Name: "Job", Value: "Server Power Off (5f1c7d0e-0c7e-4d8a-9c43-2b1f5c0e9a11)"},
		{Name: "Template", Value: "server-power-off"},
		{Name: "Resource", Value: "compute-ops-mgmt/server 875765-S01+1M512501AB"},
		{Name: "Result", Value: result},
		{Name: "COM status", Value: status},
		{Name: "Duration", Value: "3m0s"},
		{Name: "Requested by", Value: "urn:ops:runbook"},
	}
	if labels != "" {
		f = append(f, notify.Field{Name: "Labels", Value: labels})
	}
	return f
}

const link = notify.DefaultJobLinkBase + "5f1c7d0e-0c7e-4d8a-9c43-2b1f5c0e9a11"

func base(kind, mark, title string, fields []notify.Field) notify.Message {
	return notify.Message{
		Kind: kind, JobID: "5f1c7d0e-0c7e-4d8a-9c43-2b1f5c0e9a11", Channel: "#ops",
		Mark: mark, Title: title, Subject: "Server Power Off on compute-ops-mgmt/server 875765-S01+1M512501AB",
		Fields: fields, Link: link,
	}
}

// goldenCases is one message of every kind, plus hostile and oversized ones.
func goldenCases() map[string]notify.Message {
	long := strings.Repeat("status text & more <b> ", 400)
	manyLines := make([]string, 300)
	for i := range manyLines {
		manyLines[i] = "❌ SIM-FAIL-01 COMPLETE/FAILURE: firmware <component> failed"
	}
	stalled := base(notify.KindStalled, notify.MarkStalled, "STALLED", jobFields("—", "Waiting for the server to respond", "team=ops"))
	stalled.Mention = "<!subteam^S0123ABC>"
	reminder := base(notify.KindStalledReminder, notify.MarkStalled, "STILL STALLED after 2h0m0s", jobFields("—", "Waiting", ""))
	reminder.ThreadTS = "1700000001.000001"
	resolved := base(notify.KindStalledResolved, notify.MarkResolved, "LEFT STALLED → RUNNING", jobFields("—", "Running", ""))
	resolved.ThreadTS = "1700000001.000001"
	overdue := base("overdue-1h0m0s", notify.MarkOverdue, "OVERDUE", append(jobFields("—", "Waiting for approval", "")[:4],
		notify.Field{Name: "State", Value: "APPROVAL_PENDING"}, notify.Field{Name: "Overdue", Value: "in APPROVAL_PENDING for 2h0m0s (expected within 1h0m0s)"}))
	failure := base(notify.KindTerminal, notify.MarkFailure, "COMPLETE/FAILURE", jobFields("FAILURE", "Power off failed", "env=prod"))
	failure.Mention = "<@U0123ABC>"
	return map[string]notify.Message{
		"terminal-success": base(notify.KindTerminal, notify.MarkSuccess, "COMPLETE/SUCCESS", jobFields("SUCCESS", "Powered off", "change=CHG0012345, team=ops")),
		"terminal-failure": failure,
		"terminal-error":   base(notify.KindTerminal, notify.MarkError, "ERROR", jobFields("—", "Internal error", "")),
		"terminal-lost":    base(notify.KindTerminal, notify.MarkLost, "LOST", jobFields("—", "COM no longer knows this job", "")),
		"stalled":          stalled,
		"stalled-reminder": reminder,
		"stalled-resolved": resolved,
		"overdue":          overdue,
		"rejected": {Kind: notify.KindRejected, Channel: "#ops", Mark: notify.MarkRejected, Title: "REJECTED",
			Subject: "Server Power Off request req-42", Fields: []notify.Field{
				{Name: "Reason", Value: "invalid-data"}, {Name: "Message", Value: "data.batch_size: must be an integer"},
				{Name: "Field", Value: "data.batch_size"}, {Name: "Requested by", Value: "urn:ops:runbook"}, {Name: "Request id", Value: "req-42"}}},
		"submitted": base(notify.KindSubmitted, notify.MarkInfo, "SUBMITTED", jobFields("—", "Queued", "")),
		"running":   base(notify.KindRunning, notify.MarkInfo, "RUNNING", jobFields("—", "Running", "")),
		"digest": {Kind: notify.KindDigest, JobID: "8a3a2a46-parent", Channel: "#ops", Mark: notify.MarkFailure, Title: "200 CHILD JOBS ENDED",
			Subject: "Server Firmware Update children of job 8a3a2a46-parent", Link: notify.DefaultJobLinkBase + "8a3a2a46-parent",
			Fields: []notify.Field{{Name: "Parent job", Value: "8a3a2a46-parent"}, {Name: "COMPLETE/FAILURE", Value: "3"}, {Name: "COMPLETE/SUCCESS", Value: "197"}},
			Lines:  []string{"First failures:", "❌ SIM-FAIL-01 COMPLETE/FAILURE: firmware failed", "❌ SIM-FAIL-02 COMPLETE/FAILURE: firmware failed"}},
		"injection": base(notify.KindTerminal, notify.MarkFailure, "COMPLETE/FAILURE <!channel>", jobFields("FAILURE", "<https://evil.example|click here> @here &amp; <@U999>", "x=<!channel>, y=<https://evil|click>, z=@everyone")),
		"oversized": {Kind: notify.KindDigest, JobID: "p", Channel: "#ops", Mark: notify.MarkFailure, Title: strings.Repeat("VERY LONG TITLE ", 20),
			Subject: long, Fields: append(jobFields("FAILURE", long, long), jobFields("x", long, long)...), Lines: manyLines, Link: link},
	}
}

type payload struct {
	Blocks json.RawMessage `json:"blocks"`
	Text   string          `json:"text"`
}

func render(t testing.TB, m notify.Message) payload {
	t.Helper()
	blocks, text := Render(m)
	b, err := json.Marshal(blocks)
	if err != nil {
		t.Fatal(err)
	}
	return payload{Blocks: b, Text: text}
}

func TestRenderGolden(t *testing.T) {
	for name, m := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			got := render(t, m)
			var out bytes.Buffer
			enc := json.NewEncoder(&out)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			var pretty any
			_ = json.Unmarshal(got.Blocks, &pretty)
			if err := enc.Encode(map[string]any{"blocks": pretty, "text": got.Text}); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", name+".golden.json")
			if *update {
				if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update): %v", err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("%s differs from the rendering; run go test -update and review the diff\ngot:\n%s", path, out.String())
			}
		})
	}
}

// TestGoldenWithinLimits checks every golden file against Block Kit's limits.
func TestGoldenWithinLimits(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var p payload
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatal(err)
			}
			if err := slacktest.CheckBlocks(p.Blocks); err != nil {
				t.Error(err)
			}
			if n := len([]rune(p.Text)); n == 0 || n > MaxText {
				t.Errorf("fallback text of %d characters", n)
			}
		})
	}
}

func TestEscapeNeutralisesInjection(t *testing.T) {
	tests := []struct{ name, in, mustNot string }{
		{"channel ping", "<!channel>", "<!channel>"},
		{"here ping", "<!here|here>", "<!here"},
		{"link", "<https://evil|click>", "<https://evil"},
		{"user mention", "<@U123>", "<@U123>"},
		{"bare @channel", "hey @channel", "@channel"},
		{"bare @here", "@HERE now", "@HERE"},
		{"entity", "&lt;!channel&gt;", "&lt;!channel&gt;"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := base(notify.KindTerminal, notify.MarkFailure, "X", []notify.Field{{Name: "Labels", Value: tc.in}})
			m.Subject = tc.in
			m.Lines = []string{tc.in}
			p := render(t, m)
			for _, s := range []string{string(p.Blocks), p.Text} {
				var unq string
				if strings.HasPrefix(s, "[") {
					unq = strings.ReplaceAll(s, `\u003c`, "<")
					unq = strings.ReplaceAll(unq, `\u003e`, ">")
					unq = strings.ReplaceAll(unq, `\u0026`, "&")
				} else {
					unq = s
				}
				if strings.Contains(unq, tc.mustNot) {
					t.Errorf("rendering contains %q:\n%s", tc.mustNot, unq)
				}
			}
		})
	}
}

func TestCutKeepsEntities(t *testing.T) {
	s := Escape(strings.Repeat("a", 8) + "<<<<")
	for max := 5; max < len(s); max++ {
		got := cut(s, max)
		if n := len([]rune(got)); n > max {
			t.Fatalf("cut(%d) gave %d runes", max, n)
		}
		body := strings.TrimSuffix(got, "…")
		if i := strings.LastIndex(body, "&"); i >= 0 && !strings.Contains(body[i:], ";") {
			t.Fatalf("cut(%d) split an entity: %q", max, got)
		}
	}
}

func BenchmarkRenderSlackMessage(b *testing.B) {
	m := goldenCases()["terminal-failure"]
	b.ReportAllocs()
	for b.Loop() {
		blocks, text := Render(m)
		if len(blocks) == 0 || text == "" {
			b.Fatal("empty render")
		}
	}
}
