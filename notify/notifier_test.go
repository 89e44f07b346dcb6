package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	goslack "github.com/slack-go/slack"

	"github.com/comjobs/comjobs/notify"
	notifyslack "github.com/comjobs/comjobs/notify/slack"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

const token = "xoxb-1234-5678-SECRETtokenVALUE"

func bot(t *testing.T, srv *slacktest.Server, tok string) *notifyslack.Bot {
	t.Helper()
	b, err := notifyslack.NewBot(tok, srv.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOneMessagePerOutcome(t *testing.T) {
	e := newEnv(t)
	chans := []string{"#ops", "#c1", "#c2", "#c3", "#c4", "#c5", "#c6", "#c7", "#c8"}
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: chans})
	defer srv.Close()
	r := e.start(notify.Config{DefaultChannel: "#ops"}, bot(t, srv, token))

	overdue := schemas.Overdue{JobEvent: withChannel(job("job-over", schemas.StateApprovalPending, "", 2), "#c6"), Threshold: "1h0m0s", Since: time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)}
	rejected := schemas.Rejected{Reason: schemas.ReasonInvalidData, Message: "data.batch_size: must be an integer", Field: "data.batch_size", Subject: "comjobs.requests.server-power-off", Notify: &schemas.Notify{SlackChannel: "#c7"}, RejectedAt: time.Now().UTC()}
	events := []struct {
		name string
		pub  func(extra string)
		key  string // job_id/kind expected, "" for none
	}{
		{"complete success", func(x string) { e.publishJob(withChannel(job("job-ok", "COMPLETE", "SUCCESS", 3), "#c1"), x) }, "job-ok/terminal"},
		{"complete failure", func(x string) { e.publishJob(withChannel(job("job-fail", "COMPLETE", "FAILURE", 3), "#c2"), x) }, "job-fail/terminal"},
		{"error", func(x string) { e.publishJob(withChannel(job("job-err", "ERROR", "", 3), "#c3"), x) }, "job-err/terminal"},
		{"lost", func(x string) { e.publishJob(withChannel(job("job-lost", "LOST", "", 3), "#c4"), x) }, "job-lost/terminal"},
		{"stalled", func(x string) {
			e.publishJob(withChannel(withPrev(job("job-stall", "STALLED", "", 2), "RUNNING"), "#c5"), x)
		}, "job-stall/stalled"},
		{"overdue", func(x string) {
			e.publishData(schemas.TypeOverdue, schemas.OverdueSubject("server-power-off"), "job-over/overdue/1h"+x, "job-over", overdue)
		}, "job-over/overdue-1h0m0s"},
		{"rejected", func(x string) {
			e.publishData(schemas.TypeRejected, schemas.RejectedSubject("server-power-off"), "rej-1"+x, "", rejected)
		}, schemas.RequestKey(reqRef.Source, reqRef.ID) + "/rejected"},
		{"running is off by default", func(x string) { e.publishJob(withChannel(job("job-run", "RUNNING", "", 1), "#c8"), x) }, ""},
	}
	for _, ev := range events {
		ev.pub("")
		ev.pub("-again") // a second copy must not post a second message
	}
	want := 0
	for _, ev := range events {
		if ev.key != "" {
			want++
		}
	}
	eventually(t, 15*time.Second, "all events handled", func() bool { return e.pending() == 0 && len(srv.Messages()) >= want })
	got := byKey(srv.Messages())
	for _, ev := range events {
		t.Run(ev.name, func(t *testing.T) {
			if ev.key == "" {
				for k := range got {
					if strings.HasPrefix(k, "job-run/") {
						t.Errorf("unexpected message %s", k)
					}
				}
				return
			}
			if n := len(got[ev.key]); n != 1 {
				t.Errorf("%d messages for %s, want 1 (all: %v)", n, ev.key, keys(got))
			}
		})
	}
	if len(srv.Messages()) != want {
		t.Errorf("%d messages, want %d", len(srv.Messages()), want)
	}
	if d := e.dlq(); len(d) != 0 {
		t.Errorf("%d dead letters", len(d))
	}
	mustNotContain(t, "logs", r.logs.String(), token)
}

func keys(m map[string][]slacktest.Message) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestDedupeAcrossRestart covers the crash windows of the claim protocol.
func TestDedupeAcrossRestart(t *testing.T) {
	tests := []struct {
		name string
		// crash prepares the state a crash would leave: a claim without ts,
		// with or without the message in the channel.
		postedBeforeCrash bool
		wantMessages      int
	}{
		{"crash after post, before record", true, 1},
		{"crash after claim, before post", false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
			defer srv.Close()
			jobID := "job-crash"
			// The state a notifier that died mid-way leaves behind.
			claim := map[string]any{"jobId": jobID, "kind": "terminal", "channel": "#ops", "posted": false, "owner": "dead", "claimedAt": time.Now().Add(-time.Minute)}
			if _, err := e.kv.Create(t.Context(), jobID+".terminal", []byte(jsonString(claim))); err != nil {
				t.Fatal(err)
			}
			if tc.postedBeforeCrash {
				api := goslack.New(token, goslack.OptionAPIURL(srv.URL()))
				if _, _, err := api.PostMessageContext(t.Context(), "#ops", goslack.MsgOptionText("posted before the crash", false),
					goslack.MsgOptionMetadata(goslack.SlackMetadata{EventType: notifyslack.MetadataEventType, EventPayload: map[string]any{"job_id": jobID, "kind": "terminal"}})); err != nil {
					t.Fatal(err)
				}
			}
			e.publishJob(job(jobID, "COMPLETE", "SUCCESS", 3), "")
			r := e.start(notify.Config{DefaultChannel: "#ops", ClaimTimeout: 200 * time.Millisecond}, bot(t, srv, token))
			eventually(t, 10*time.Second, "event handled", func() bool { return e.pending() == 0 })
			// Restart and redeliver the same outcome: still no second message.
			r.stop()
			e.publishJob(job(jobID, "COMPLETE", "SUCCESS", 3), "-redelivered")
			e.start(notify.Config{DefaultChannel: "#ops", ClaimTimeout: 200 * time.Millisecond}, bot(t, srv, token))
			eventually(t, 10*time.Second, "redelivery handled", func() bool { return e.pending() == 0 })
			if n := len(srv.Messages()); n != tc.wantMessages {
				t.Fatalf("%d messages, want %d", n, tc.wantMessages)
			}
			ent, err := e.kv.Get(t.Context(), jobID+".terminal")
			if err != nil {
				t.Fatal(err)
			}
			var rec struct {
				Posted bool   `json:"posted"`
				TS     string `json:"ts"`
			}
			_ = json.Unmarshal(ent.Value(), &rec)
			if !rec.Posted || rec.TS != srv.Messages()[0].TS {
				t.Errorf("record %s, want posted with ts %s", ent.Value(), srv.Messages()[0].TS)
			}
		})
	}
}

func TestRateLimitStormLosesNothing(t *testing.T) {
	e := newEnv(t)
	chans := []string{"#ops", "#a", "#b", "#c"}
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: chans, Rate429: 0.5, Seed: 7})
	defer srv.Close()
	e.start(notify.Config{DefaultChannel: "#ops"}, bot(t, srv, token))
	const n = 12
	for i := range n {
		e.publishJob(withChannel(job(fmt.Sprintf("job-%02d", i), "COMPLETE", "SUCCESS", 3), chans[i%len(chans)]), "")
	}
	eventually(t, 40*time.Second, "all posted", func() bool { return e.pending() == 0 })
	got := byKey(srv.Messages())
	for i := range n {
		if k := fmt.Sprintf("job-%02d/terminal", i); len(got[k]) != 1 {
			t.Errorf("%s: %d messages, want 1", k, len(got[k]))
		}
	}
	if srv.Calls()["chat.postMessage"] <= n {
		t.Errorf("no 429 was served (%d calls): the test proves nothing", srv.Calls()["chat.postMessage"])
	}
}

func TestChildBurstIsDigested(t *testing.T) {
	e := newEnv(t)
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
	defer srv.Close()
	r := e.start(notify.Config{DefaultChannel: "#ops", DigestWindow: 1500 * time.Millisecond}, bot(t, srv, token))
	parent := "8a3a2a46-parent"
	const children = 200
	for i := range children {
		res := "SUCCESS"
		if i%50 == 7 {
			res = "FAILURE"
		}
		j := job(fmt.Sprintf("child-%03d", i), "COMPLETE", res, 3)
		j.ParentJobID = &parent
		e.publishJob(j, "")
	}
	eventually(t, 30*time.Second, "burst handled", func() bool { return e.pending() == 0 })
	msgs := srv.Messages()
	if len(msgs) > 3 {
		t.Fatalf("%d messages for a %d-child burst, want a digest (≤ 3)", len(msgs), children)
	}
	posted := 0
	for i := range children {
		ent, err := e.kv.Get(t.Context(), fmt.Sprintf("child-%03d.terminal", i))
		if err == nil && strings.Contains(string(ent.Value()), `"posted":true`) {
			posted++
		}
	}
	if posted != children {
		t.Errorf("%d of %d children recorded as notified", posted, children)
	}
	if !strings.Contains(msgs[0].Text, "FAILURE") {
		t.Errorf("digest does not list failures: %s", msgs[0].Text)
	}
	_ = r
}

func TestPermanentErrorIsDeadLettered(t *testing.T) {
	e := newEnv(t)
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
	defer srv.Close()
	r := e.start(notify.Config{DefaultChannel: "#ops"}, bot(t, srv, token))
	e.publishJob(withChannel(job("job-nowhere", "ERROR", "", 3), "#does-not-exist"), "")
	e.publishJob(job("job-fine", "COMPLETE", "SUCCESS", 3), "")
	eventually(t, 10*time.Second, "events handled", func() bool { return e.pending() == 0 })
	d := e.dlq()
	if len(d) != 1 {
		t.Fatalf("%d dead letters, want 1", len(d))
	}
	if got := d[0].Headers().Get(notify.HeaderDLQReason); got != "channel_not_found" {
		t.Errorf("reason %q", got)
	}
	if d[0].Subject() != schemas.DLQSubject("notifier", "channel_not_found") {
		t.Errorf("subject %s", d[0].Subject())
	}
	if !strings.Contains(string(d[0].Data()), "job-nowhere") {
		t.Errorf("dead letter lost the original event: %s", d[0].Data())
	}
	if len(srv.Messages()) != 1 || r.n.Ready() != nil {
		t.Errorf("messages %d, ready %v: a bad channel must not stop the rest", len(srv.Messages()), r.n.Ready())
	}
	// The claim was freed: a fixed route could post it later.
	if _, err := e.kv.Get(t.Context(), "job-nowhere.terminal"); err == nil {
		t.Error("claim of a dead-lettered message kept")
	}
}

func TestInjectionIsEscaped(t *testing.T) {
	e := newEnv(t)
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
	defer srv.Close()
	e.start(notify.Config{DefaultChannel: "#ops"}, bot(t, srv, token))
	j := job("job-evil", "COMPLETE", "FAILURE", 3)
	j.Labels = map[string]string{"a": "<!channel>", "b": "<https://evil.example|click>", "c": "@here"}
	j.Status = "<!here> <@U0123>"
	e.publishJob(j, "")
	eventually(t, 10*time.Second, "posted", func() bool { return len(srv.Messages()) == 1 })
	m := srv.Messages()[0]
	for _, s := range []string{m.Text, string(m.Blocks)} {
		s = strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&").Replace(s)
		for _, bad := range []string{"<!channel>", "<https://evil", "<!here>", "<@U0123>", "@here"} {
			if strings.Contains(s, bad) {
				t.Errorf("posted text contains %q: %s", bad, s)
			}
		}
	}
}

func TestStalledReminderAndResolutionThreaded(t *testing.T) {
	e := newEnv(t)
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
	defer srv.Close()
	e.start(notify.Config{DefaultChannel: "#ops", StalledRepeat: 1200 * time.Millisecond,
		Routes: []notify.Route{{State: "STALLED", Mention: "<!subteam^S0123>"}}}, bot(t, srv, token))
	e.publishJob(withPrev(job("job-st", "STALLED", "", 2), "RUNNING"), "")
	eventually(t, 10*time.Second, "alert", func() bool { return len(srv.Messages()) == 1 })
	alert := srv.Messages()[0]
	if !strings.HasPrefix(alert.Text, "<!subteam^S0123>") {
		t.Errorf("alert without the route's mention: %q", alert.Text)
	}
	eventually(t, 10*time.Second, "reminder", func() bool { return len(byKey(srv.Messages())["job-st/stalled-reminder"]) >= 1 })
	rem := byKey(srv.Messages())["job-st/stalled-reminder"][0]
	if rem.ThreadTS != alert.TS {
		t.Errorf("reminder thread %q, want %q", rem.ThreadTS, alert.TS)
	}
	e.publishJob(withPrev(job("job-st", "RUNNING", "", 3), "STALLED"), "")
	eventually(t, 10*time.Second, "resolution", func() bool {
		return len(byKey(srv.Messages())["job-st/stalled-resolved"]) == 1 && len(srv.Updates()) == 1
	})
	res := byKey(srv.Messages())["job-st/stalled-resolved"][0]
	if res.ThreadTS != alert.TS {
		t.Errorf("resolution thread %q, want %q", res.ThreadTS, alert.TS)
	}
	if u := srv.Updates()[0]; u.TS != alert.TS || !strings.Contains(u.Text, "WAS STALLED") {
		t.Errorf("update %+v, want the alert edited to show the final state", u)
	}
}

func TestBrokenSetupPauses(t *testing.T) {
	tests := []struct {
		name    string
		sink    func(srv *slacktest.Server) notify.Sink
		secrets func(srv *slacktest.Server) []string
		fix     func(srv *slacktest.Server)
	}{
		{
			name: "revoked bot token",
			sink: func(srv *slacktest.Server) notify.Sink { return bot(t, srv, "xoxb-9999-REVOKEDsecret") },
			secrets: func(*slacktest.Server) []string {
				return []string{"xoxb-9999-REVOKEDsecret", "REVOKEDsecret"}
			},
			fix: func(srv *slacktest.Server) { srv.SetTokens(token, "xoxb-9999-REVOKEDsecret") },
		},
		{
			name: "deleted webhook",
			sink: func(srv *slacktest.Server) notify.Sink {
				w, err := notifyslack.NewWebhook(strings.Replace(srv.WebhookURL(), "XXXXSECRET", "GONEsecret", 1), nil)
				if err != nil {
					t.Fatal(err)
				}
				return w
			},
			secrets: func(*slacktest.Server) []string { return []string{"GONEsecret"} },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
			defer srv.Close()
			r := e.start(notify.Config{DefaultChannel: "#ops", ProbeInterval: 100 * time.Millisecond}, tc.sink(srv))
			e.publishJob(job("job-p1", "COMPLETE", "SUCCESS", 3), "")
			e.publishJob(job("job-p2", "ERROR", "", 3), "")
			eventually(t, 10*time.Second, "paused", func() bool { return r.n.Ready() != nil })
			time.Sleep(300 * time.Millisecond) // a few probe rounds
			if d := e.dlq(); len(d) != 0 {
				t.Errorf("%d dead letters while paused, want none", len(d))
			}
			if p := e.pending(); p != 2 {
				t.Errorf("%d events pending, want both kept", p)
			}
			if got := gauge(t, r, "comjobs_notifier_paused"); got != 1 {
				t.Errorf("paused gauge %v", got)
			}
			if tc.fix != nil {
				tc.fix(srv)
				eventually(t, 10*time.Second, "resumed and posted", func() bool { return r.n.Ready() == nil && e.pending() == 0 })
				if n := len(srv.Messages()); n != 2 {
					t.Errorf("%d messages after resume, want 2", n)
				}
			}
			r.stop()
			mustNotContain(t, "logs", r.logs.String(), tc.secrets(srv)...)
			if !strings.Contains(r.logs.String(), "paused") {
				t.Errorf("pause not logged:\n%s", r.logs.String())
			}
		})
	}
}

func TestWebhookMode(t *testing.T) {
	e := newEnv(t)
	srv := slacktest.NewServer(slacktest.Options{Channels: []string{"#hook"}})
	defer srv.Close()
	w, err := notifyslack.NewWebhook(srv.WebhookURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.start(notify.Config{}, w)
	e.publishJob(job("job-w1", "COMPLETE", "SUCCESS", 3), "")
	e.publishJob(job("job-w1", "COMPLETE", "SUCCESS", 3), "-again")
	e.publishJob(withPrev(job("job-w2", "STALLED", "", 2), "RUNNING"), "")
	eventually(t, 10*time.Second, "handled", func() bool { return e.pending() == 0 })
	if n := len(srv.Webhooks()); n != 2 {
		t.Errorf("%d webhook posts, want 2", n)
	}
}

func gauge(t *testing.T, r *running, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	return -1
}

var _ = context.Background

// TestRejectedWithoutIdentity: requests that had no usable id are rejected
// under their stream sequence; each still gets its own message.
func TestRejectedWithoutIdentity(t *testing.T) {
	e := newEnv(t)
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{token}, Channels: []string{"#ops"}})
	defer srv.Close()
	e.start(notify.Config{DefaultChannel: "#ops"}, bot(t, srv, token))
	for i, seqKey := range []string{schemas.RequestKey("", "seq:7"), schemas.RequestKey("", "seq:8")} {
		rej := schemas.Rejected{Reason: schemas.ReasonInvalidEvent, Message: "ce-id: required", Subject: "comjobs.requests.server-power-on", StreamSeq: uint64(7 + i), RejectedAt: time.Now().UTC()}
		ev, err := publisher.NewEvent(schemas.TypeRejected, "comjobs/consumer", seqKey+"/rejected", seqKey, rej, publisher.RequestRef{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.pub.Publish(t.Context(), schemas.RejectedSubject("unknown"), ev, seqKey+"/rejected"); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, "two rejection messages", func() bool { return len(srv.Messages()) == 2 && e.pending() == 0 })
}
