package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/notify"
	notifyslack "github.com/comjobs/comjobs/notify/slack"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

const slackToken = "xoxb-bench-token"

// post is one chat.postMessage call as the notifier's HTTP client saw it.
type post struct {
	sent, at    time.Time // request sent, answer received
	channel     string
	jobID, kind string
	ok          bool
	ratelimited bool
}

// postRecorder is the Slack sink's transport: it notes when each
// chat.postMessage was answered, for which job and kind, and how.
type postRecorder struct {
	next  http.RoundTripper
	mu    sync.Mutex
	posts []post
}

func (r *postRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(req.URL.Path, "/chat.postMessage") || req.Body == nil {
		return r.next.RoundTrip(req)
	}
	body, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	var md struct {
		Payload map[string]any `json:"event_payload"`
	}
	_ = json.Unmarshal([]byte(form.Get("metadata")), &md)
	sent := time.Now()
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	answer, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(answer))
	p := post{sent: sent, at: time.Now(), channel: form.Get("channel"), jobID: fmt.Sprint(md.Payload["job_id"]), kind: fmt.Sprint(md.Payload["kind"]),
		ok: bytes.Contains(answer, []byte(`"ok":true`)), ratelimited: resp.StatusCode == http.StatusTooManyRequests}
	r.mu.Lock()
	r.posts = append(r.posts, p)
	r.mu.Unlock()
	return resp, err
}

func (r *postRecorder) all() []post {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.posts)
}

// notifyRows measures row 3: terminal events through the notifier and the
// Slack bot sink to the recording Slack server.
func notifyRows(t *testing.T, sz sizes) []row {
	s := newStack(t, comsim.Options{Seed: 1})
	channels := make([]string, sz.channels)
	for i := range channels {
		channels[i] = fmt.Sprintf("#bench-%02d", i)
	}
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{slackToken}, Channels: channels})
	t.Cleanup(srv.Close)
	rec := &postRecorder{next: http.DefaultTransport.(*http.Transport).Clone()}
	bot, err := notifyslack.NewBot(slackToken, srv.URL(), &http.Client{Transport: rec, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, njs := connect(t, s.url)
	n, err := notify.New(notify.Config{DefaultChannel: channels[0]}, notify.Deps{JS: njs, Sink: bot, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}

	// A fifth of the events are children of group jobs ending together
	// (groups of 20, or 8 at smoke size): each group should become a digest.
	groupSize := 20
	if !*full {
		groupSize = 8
	}
	groups := max(sz.notify/5/groupSize, 1)
	children := groups * groupSize
	alone := sz.notify - children
	type sent struct {
		at     time.Time
		parent string
	}
	published := make(map[string]sent, sz.notify)
	_, js := connect(t, s.url)
	pub := publisher.New(js, discard)
	created := time.Now().Add(-time.Hour).UTC()
	event := func(i int, parent string, channel string) {
		id := fmt.Sprintf("bench-job-%05d", i)
		state, result := "COMPLETE", "SUCCESS"
		if i%10 == 3 {
			state, result = "ERROR", "FAILURE"
		}
		prev := "RUNNING"
		j := schemas.JobEvent{JobID: id, JobURI: "/compute-ops-mgmt/v1/jobs/" + id, PreviousState: &prev,
			Template: schemas.TemplateRef{ID: "d0c13b58-748c-461f-9a61-c0c5c71f1bb4", Name: "Server Power Off", Slug: "server-power-off"},
			Resource: schemas.Resource{Type: "compute-ops-mgmt/server", ID: fmt.Sprintf("BENCH-N-%05d", i)},
			State:    state, ResultCode: &result, Status: "bench " + state, Terminal: true, Generation: 3,
			CreatedAt: created, UpdatedAt: created.Add(time.Minute), ObservedAt: time.Now().UTC(),
			Notify: &schemas.Notify{SlackChannel: channel}}
		if parent != "" {
			j.ParentJobID = &parent
		}
		ev, err := publisher.NewEvent(schemas.TypeStateChanged, "comjobs/tracker", id+"/3", id, j,
			publisher.RequestRef{ID: "req-" + id, Source: "//bench/notify"})
		if err != nil {
			t.Fatal(err)
		}
		published[id] = sent{at: time.Now(), parent: parent}
		if _, err := pub.PublishAsync(schemas.StateSubject(state, j.Template.Slug), ev, id+"/3"); err != nil {
			t.Fatal(err)
		}
	}
	stop := runBG(t, "notifier", n.Run)
	defer stop()
	poll.Until(t, time.Minute, "notifier ready", func() (bool, string) {
		err := n.Ready()
		return err == nil, fmt.Sprint(err)
	})
	start := time.Now()
	i := 0
	for g := range groups {
		parent := fmt.Sprintf("bench-group-%03d", g)
		for range groupSize {
			event(i, parent, channels[g%len(channels)])
			i++
		}
	}
	for k := range alone {
		event(i, "", channels[k%len(channels)])
		i++
	}
	if err := pub.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Done once every lone job has its message and every group its digest.
	poll.Until(t, 10*time.Minute, "every event posted or digested", func() (bool, string) {
		lone, digests := 0, 0
		for _, p := range rec.all() {
			switch {
			case !p.ok:
			case p.kind == notify.KindDigest:
				digests++
			case published[p.jobID].parent == "":
				lone++
			}
		}
		return lone >= alone && digests >= groups, fmt.Sprintf("%d of %d messages, %d of %d digests", lone, alone, digests, groups)
	})
	elapsed := time.Since(start)
	stop()

	posts := rec.all()
	posted := map[string]time.Time{} // job or group id → when its message was answered
	byChannel := map[string][]time.Time{}
	var digests, msgs, ratelimited int
	for _, p := range posts {
		if p.ratelimited {
			ratelimited++
		}
		if !p.ok {
			continue
		}
		msgs++
		if p.kind == notify.KindDigest {
			digests++
		}
		if _, ok := posted[p.jobID]; !ok {
			posted[p.jobID] = p.at
		}
		byChannel[p.channel] = append(byChannel[p.channel], p.sent)
	}
	var lat latencies
	for id, s := range published {
		key := id
		if at, ok := posted[s.parent]; ok && s.parent != "" {
			lat.add(at.Sub(s.at))
			continue
		}
		if at, ok := posted[key]; ok {
			lat.add(at.Sub(s.at))
		}
	}
	if lat.len() != sz.notify {
		t.Errorf("%d of %d events reached Slack, alone or in a digest", lat.len(), sz.notify)
	}
	maxPerSecond, minGap := 0, time.Duration(1<<62)
	for _, ts := range byChannel {
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
		for i := range ts {
			k := 0
			for j := i; j < len(ts) && ts[j].Sub(ts[i]) < time.Second; j++ {
				k++
			}
			maxPerSecond = max(maxPerSecond, k)
			if i > 0 {
				minGap = min(minGap, ts[i].Sub(ts[i-1]))
			}
		}
	}
	perChannel := (alone + len(channels) - 1) / len(channels)
	return []row{
		{fmt.Sprintf("notifying: %d terminal events → Slack (%d channels): event → post p50 / p99", sz.notify, len(channels)),
			ms(lat.quantile(0.5)) + " / " + ms(lat.quantile(0.99)),
			fmt.Sprintf("Slack's pace: ~%d messages a channel need ≥ %d s", perChannel+1, perChannel), ""},
		{"notifying: posts sent to one channel in any 1 s (max) / least gap", fmt.Sprintf("%d / %s", maxPerSecond, ms(minGap)),
			"Slack: 1 per second per channel", fmt.Sprintf("%d 429s", ratelimited)},
		{"notifying: messages posted; digests formed", fmt.Sprintf("%d messages; %d digests for %d children", msgs, digests, children),
			fmt.Sprintf("%d messages without digests", sz.notify), ""},
		{"notifying: all events handled in", fmt.Sprintf("%.1f s", elapsed.Seconds()), "", ""},
	}
}
