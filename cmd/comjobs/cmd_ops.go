package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/consumer"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

// connect opens NATS only (no COM), for the operations commands.
func connect(ctx context.Context, env *Env) (*infra, error) {
	return openInfra(ctx, env.Config, env.Logger, infraOptions{})
}

func cmdPause(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "pause", "pause [--reason text]")
	reason := fs.String("reason", "paused by hand", "why submission is paused (logged by every consumer; the comjobs_consumer_paused metric reads 1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := connect(ctx, env)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := consumer.Pause(ctx, in.js, *reason); err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "submission paused: requests stay queued until `comjobs resume`")
	return nil
}

func cmdResume(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "resume", "resume")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := connect(ctx, env)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := consumer.Resume(ctx, in.js); err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "submission resumed")
	return nil
}

func cmdDLQ(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		return &exitError{code: 2, err: fmt.Errorf("usage: comjobs dlq list [--json] | comjobs dlq replay <seq>|--all")}
	}
	sub := args[0]
	fs := newFlags(env, "dlq "+sub, "dlq list [--json] | dlq replay <seq>|--all")
	asJSON := fs.Bool("json", false, "JSON output (list)")
	all := fs.Bool("all", false, "replay every consumer dead letter")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	in, err := connect(ctx, env)
	if err != nil {
		return err
	}
	defer in.Close()
	switch sub {
	case "list":
		dls, err := consumer.ListDLQ(ctx, in.js)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(env.Stdout).Encode(dls)
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tAGE\tROLE\tREASON\tSUBJECT\tMESSAGE")
		for _, d := range dls {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", d.Seq, d.Age.Round(time.Second), d.Role, d.Reason, d.Subject, truncate(strings.TrimPrefix(d.Message, d.Reason+": "), 100))
		}
		return tw.Flush()
	default:
		var seq uint64
		if !*all {
			if len(pos) != 1 {
				return &exitError{code: 2, err: fmt.Errorf("dlq replay: give one sequence number or --all")}
			}
			if seq, err = strconv.ParseUint(pos[0], 10, 64); err != nil || seq == 0 {
				return &exitError{code: 2, err: fmt.Errorf("dlq replay: %q is not a sequence number", pos[0])}
			}
		}
		n, err := consumer.Replay(ctx, in.js, seq)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "replayed %d dead letter(s)\n", n)
		return nil
	}
}

func cmdJobs(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "show" && args[0] != "end") {
		return &exitError{code: 2, err: fmt.Errorf("usage: comjobs jobs list [--all] | show <id> | end <id> --reason text [--state ERROR|COMPLETE]")}
	}
	sub := args[0]
	fs := newFlags(env, "jobs "+sub, "jobs list [--all] [--json] | show <id> | end <id> --reason text [--state ERROR|COMPLETE]")
	all := fs.Bool("all", false, "list: include ended jobs")
	asJSON := fs.Bool("json", false, "list: JSON output")
	reason := fs.String("reason", "", "end: why the job is ended by hand (required)")
	state := fs.String("state", "ERROR", "end: the state to set, ERROR or COMPLETE")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	needCOM := sub == "end"
	in, err := openInfra(ctx, env.Config, env.Logger, infraOptions{needCOM: needCOM, banner: env.Stderr})
	if err != nil {
		return err
	}
	defer in.Close()
	switch sub {
	case "list":
		recs, err := tracker.ListTracked(ctx, in.js)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(env.Stdout).Encode(recs)
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tTEMPLATE\tRESOURCE\tSTATE\tRESULT\tSINCE\tREQUEST SOURCE")
		for _, r := range recs {
			if r.Terminal && !*all {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.JobID, r.Template.Slug, r.Resource.ID, orDash(r.State), orDash(deref(r.ResultCode)), r.StateSince.Format(time.RFC3339), r.Request.Source)
		}
		return tw.Flush()
	case "show":
		if len(pos) != 1 {
			return &exitError{code: 2, err: fmt.Errorf("jobs show: give one job id")}
		}
		rec, err := tracker.GetTracked(ctx, in.js, pos[0])
		if err != nil {
			return err
		}
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rec)
	default:
		if len(pos) != 1 {
			return &exitError{code: 2, err: fmt.Errorf("jobs end: give one job id")}
		}
		if strings.TrimSpace(*reason) == "" {
			return &exitError{code: 2, err: fmt.Errorf("jobs end: --reason is required (say why the job is ended by hand)")}
		}
		st := strings.ToUpper(*state)
		job, err := tracker.EndJob(ctx, in.com, pos[0], st, *reason)
		if err != nil {
			return err
		}
		env.Logger.Info("job ended by hand", "job", job.ID, "state", st, "reason", *reason)
		fmt.Fprintf(env.Stdout, "job %s set to %s; the tracker will publish the change\n", job.ID, job.State)
		return nil
	}
}

func cmdTail(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "tail", "tail [--all] [--state S] [--template slug] [--label k=v] [--json]")
	all := fs.Bool("all", false, "start from the oldest event kept, not from now")
	state := fs.String("state", "", "only events of this state (e.g. STALLED, complete)")
	tmpl := fs.String("template", "", "only events of this template slug")
	label := fs.String("label", "", "only events carrying this label (key=value)")
	asJSON := fs.Bool("json", false, "print each event as structured CloudEvent JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lk, lv, hasLabel := strings.Cut(*label, "=")
	if *label != "" && !hasLabel {
		return &exitError{code: 2, err: fmt.Errorf("tail: --label wants key=value, got %q", *label)}
	}
	in, err := connect(ctx, env)
	if err != nil {
		return err
	}
	defer in.Close()
	filter := schemas.SubjectEvents + ".>"
	if *tmpl != "" {
		filter = schemas.SubjectEvents + ".*." + schemas.Slug(*tmpl)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverNewPolicy}
	if *all {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	oc, err := in.js.OrderedConsumer(ctx, schemas.StreamEvents, cfg)
	if err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	it, err := oc.Messages()
	if err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tail: %w", err)
		}
		e, err := cenats.Decode(msg.Headers(), msg.Data(), cenats.DecodeOptions{MaxSize: 1 << 20})
		if err != nil {
			env.Logger.Warn("undecodable event skipped", "subject", msg.Subject(), "err", err)
			continue
		}
		var d struct {
			State  string            `json:"state"`
			Labels map[string]string `json:"labels"`
		}
		_ = json.Unmarshal(e.Data(), &d)
		if *state != "" && !strings.EqualFold(d.State, *state) && schemas.StateToken(d.State) != strings.ToLower(*state) {
			continue
		}
		if hasLabel && d.Labels[lk] != lv {
			continue
		}
		if *asJSON {
			b, _ := json.Marshal(e)
			fmt.Fprintln(env.Stdout, string(b))
			continue
		}
		fmt.Fprintln(env.Stdout, describeEvent(e))
	}
}

// describeEvent renders one event as a single readable line.
func describeEvent(e event.Event) string {
	var d struct {
		JobID      string              `json:"jobId"`
		Template   schemas.TemplateRef `json:"template"`
		Resource   schemas.Resource    `json:"resource"`
		Previous   *string             `json:"previousState"`
		State      string              `json:"state"`
		ResultCode *string             `json:"resultCode"`
		Reason     string              `json:"reason"`
		Message    string              `json:"message"`
		Threshold  string              `json:"threshold"`
	}
	_ = json.Unmarshal(e.Data(), &d)
	ts := e.Time().Format("15:04:05.000")
	switch e.Type() {
	case schemas.TypeRejected:
		return fmt.Sprintf("%s  REJECTED         %-12s request %s: %s", ts, d.Reason, ext(e, schemas.ExtRequestID), truncate(d.Message, 120))
	case schemas.TypeOverdue:
		return fmt.Sprintf("%s  OVERDUE          %-36s %s on %s still %s after %s", ts, d.JobID, d.Template.Slug, d.Resource.ID, d.State, d.Threshold)
	case schemas.TypeSubmitted:
		return fmt.Sprintf("%s  SUBMITTED        %-36s %s on %s", ts, d.JobID, d.Template.Slug, d.Resource.ID)
	default:
		state := d.State
		if d.ResultCode != nil {
			state += "/" + *d.ResultCode
		}
		prev := "new"
		if d.Previous != nil {
			prev = *d.Previous
		}
		return fmt.Sprintf("%s  %-16s %-36s %s on %s (was %s)", ts, state, d.JobID, d.Template.Slug, d.Resource.ID, prev)
	}
}

func ext(e event.Event, name string) string {
	if v, ok := e.Extensions()[name]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
