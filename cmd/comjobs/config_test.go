package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clearSettings blanks every COMJOBS_ variable of the test process for the
// test (empty counts as unset).
func clearSettings(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "")
		}
	}
}

// TestSettingsErrors runs Main with bad settings: each stops with exit code
// 2 and a message naming the variable, never printing a secret value.
func TestSettingsErrors(t *testing.T) {
	const secret = "s3cr3t-value-never-printed"
	missing := filepath.Join(t.TempDir(), "no-such-file")
	tests := []struct {
		name     string
		env      map[string]string
		wantVar  string
		wantText string // more the message must say
	}{
		{name: "replicas", env: map[string]string{"COMJOBS_REPLICAS": "2"}, wantVar: "COMJOBS_REPLICAS", wantText: "1 or 3"},
		{name: "replicas not a number", env: map[string]string{"COMJOBS_REPLICAS": "three"}, wantVar: "COMJOBS_REPLICAS"},
		{name: "poll interval", env: map[string]string{"COMJOBS_POLL_INTERVAL": "fast"}, wantVar: "COMJOBS_POLL_INTERVAL"},
		{name: "poll interval too short", env: map[string]string{"COMJOBS_POLL_INTERVAL": "1ms"}, wantVar: "COMJOBS_POLL_INTERVAL"},
		{name: "api version", env: map[string]string{"COMJOBS_COM_API_VERSION": "v2"}, wantVar: "COMJOBS_COM_API_VERSION", wantText: "v1"},
		{name: "base URL without token URL", env: map[string]string{
			"COMJOBS_COM_BASE_URL": "https://us-west.api.greenlake.hpe.com", "COMJOBS_COM_CLIENT_ID": "id", "COMJOBS_COM_CLIENT_SECRET": secret,
		}, wantVar: "COMJOBS_COM_TOKEN_URL"},
		{name: "base URL without secret", env: map[string]string{
			"COMJOBS_COM_BASE_URL": "https://us-west.api.greenlake.hpe.com", "COMJOBS_COM_TOKEN_URL": "https://sso.common.cloud.hpe.com/as/token.oauth2", "COMJOBS_COM_CLIENT_ID": "id",
		}, wantVar: "COMJOBS_COM_CLIENT_SECRET"},
		{name: "base URL not a URL", env: map[string]string{"COMJOBS_COM_BASE_URL": "us-west.example"}, wantVar: "COMJOBS_COM_BASE_URL"},
		{name: "slack token and webhook", env: map[string]string{
			"COMJOBS_SLACK_TOKEN": "xoxb-" + secret, "COMJOBS_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/" + secret,
		}, wantVar: "COMJOBS_SLACK_WEBHOOK_URL"},
		{name: "webhook URL not a URL", env: map[string]string{"COMJOBS_SLACK_WEBHOOK_URL": "hooks.slack.com/" + secret}, wantVar: "COMJOBS_SLACK_WEBHOOK_URL"},
		{name: "secret and its file", env: map[string]string{
			"COMJOBS_COM_CLIENT_SECRET": secret, "COMJOBS_COM_CLIENT_SECRET_FILE": missing,
		}, wantVar: "COMJOBS_COM_CLIENT_SECRET_FILE"},
		{name: "secret file missing", env: map[string]string{"COMJOBS_SLACK_TOKEN_FILE": missing}, wantVar: "COMJOBS_SLACK_TOKEN_FILE"},
		{name: "http addr", env: map[string]string{"COMJOBS_HTTP_ADDR": "nonsense"}, wantVar: "COMJOBS_HTTP_ADDR", wantText: "host:port"},
		{name: "nats URL scheme", env: map[string]string{"COMJOBS_NATS_URL": "http://127.0.0.1:4222"}, wantVar: "COMJOBS_NATS_URL"},
		{name: "log format", env: map[string]string{"COMJOBS_LOG_FORMAT": "xml"}, wantVar: "COMJOBS_LOG_FORMAT"},
		{name: "workers", env: map[string]string{"COMJOBS_WORKERS": "0"}, wantVar: "COMJOBS_WORKERS"},
		{name: "shutdown timeout", env: map[string]string{"COMJOBS_SHUTDOWN_TIMEOUT": "10ms"}, wantVar: "COMJOBS_SHUTDOWN_TIMEOUT"},
		{name: "policy file missing", env: map[string]string{"COMJOBS_POLICY_FILE": missing}, wantVar: "COMJOBS_POLICY_FILE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearSettings(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			code := Main(ctx, []string{"run"}, &stdout, &stderr)
			msg := stderr.String()
			if code != 2 {
				t.Fatalf("exit code %d, want 2; stderr: %s", code, msg)
			}
			if !strings.Contains(msg, "settings: "+tc.wantVar+":") {
				t.Errorf("message %q does not name %s", msg, tc.wantVar)
			}
			if tc.wantText != "" && !strings.Contains(msg, tc.wantText) {
				t.Errorf("message %q does not say %q", msg, tc.wantText)
			}
			if strings.Contains(msg+stdout.String(), secret) {
				t.Errorf("the output holds a secret value: %q", msg)
			}
		})
	}
}

// TestSettingsLoad checks the settings that must load: empty values count as
// unset, and secrets come from their _FILE twins.
func TestSettingsLoad(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("from-the-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.NATSURL != "" || c.PollInterval != 10*time.Second || c.Replicas != 1 || c.SlackChannel != "#comjobs" || c.COMAPIVersion != "v1" {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "empty values count as unset", env: map[string]string{
			"COMJOBS_NATS_URL": "", "COMJOBS_POLL_INTERVAL": "", "COMJOBS_REPLICAS": " ", "COMJOBS_NOTIFY_REJECTED": "",
		}, check: func(t *testing.T, c Config) {
			if c.NATSURL != "" || c.PollInterval != 10*time.Second || c.Replicas != 1 || !c.NotifyRejected {
				t.Errorf("empty values did not take the defaults: %+v", c)
			}
			if v, ok := os.LookupEnv("COMJOBS_NATS_URL"); !ok || v != "" {
				t.Errorf("LoadConfig did not put back the empty COMJOBS_NATS_URL")
			}
		}},
		{name: "client secret from file", env: map[string]string{
			"COMJOBS_COM_BASE_URL": "https://us-west.api.greenlake.hpe.com", "COMJOBS_COM_TOKEN_URL": "https://sso.common.cloud.hpe.com/as/token.oauth2",
			"COMJOBS_COM_CLIENT_ID": "id", "COMJOBS_COM_CLIENT_SECRET_FILE": secretFile,
		}, check: func(t *testing.T, c Config) {
			if c.COMClientSecret != "from-the-file" {
				t.Errorf("COMClientSecret = %q, want the file's trimmed content", c.COMClientSecret)
			}
		}},
		{name: "slack token from file", env: map[string]string{"COMJOBS_SLACK_TOKEN_FILE": secretFile}, check: func(t *testing.T, c Config) {
			if c.SlackToken != "from-the-file" {
				t.Errorf("SlackToken = %q", c.SlackToken)
			}
		}},
		{name: "values", env: map[string]string{
			"COMJOBS_NATS_URL": "nats://a:4222, nats://b:4222", "COMJOBS_REPLICAS": "3", "COMJOBS_POLL_INTERVAL": "250ms", "COMJOBS_HTTP_ADDR": ":9090",
		}, check: func(t *testing.T, c Config) {
			if c.Replicas != 3 || c.PollInterval != 250*time.Millisecond || c.HTTPAddr != ":9090" {
				t.Errorf("values not taken: %+v", c)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearSettings(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := LoadConfig()
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			tc.check(t, c)
		})
	}
}

// TestHelpListsEverySetting checks that `comjobs run --help`, and every
// other command's --help, exits 0 and lists every COMJOBS_ variable of
// Config with its default.
func TestHelpListsEverySetting(t *testing.T) {
	clearSettings(t)
	type setting struct{ name, def string }
	var settings []setting
	ct := reflect.TypeOf(Config{})
	for i := 0; i < ct.NumField(); i++ {
		f := ct.Field(i)
		tag := f.Tag.Get("envconfig")
		if tag == "" {
			t.Errorf("Config.%s has no envconfig tag", f.Name)
			continue
		}
		if f.Tag.Get("desc") == "" {
			t.Errorf("Config.%s has no desc tag", f.Name)
		}
		settings = append(settings, setting{envPrefix + "_" + tag, f.Tag.Get("default")})
	}
	names := []string{"run"}
	for n := range commands {
		if n != "run" {
			names = append(names, n)
		}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if code := Main(ctx, []string{name, "--help"}, &stdout, &stderr); code != 0 {
				t.Fatalf("comjobs %s --help: exit %d; stderr: %s", name, code, stderr.String())
			}
			out := stdout.String() + stderr.String()
			lines := strings.Split(out, "\n")
			for _, s := range settings {
				found := false
				for _, l := range lines {
					f := strings.Fields(l)
					if len(f) >= 2 && f[0] == s.name {
						found = true
						if s.def != "" && f[1] != s.def {
							t.Errorf("%s listed with default %q, want %q", s.name, f[1], s.def)
						}
					}
				}
				if !found {
					t.Errorf("comjobs %s --help does not list %s", name, s.name)
				}
			}
		})
	}
}
