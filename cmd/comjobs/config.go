package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// envPrefix is the prefix of every setting's environment variable.
const envPrefix = "COMJOBS"

// Config is every setting of comjobs, read from COMJOBS_* environment
// variables. Defaults are in the struct tags; Validate names the variable
// of the first bad value. Fields tagged secret may also come from
// COMJOBS_<NAME>_FILE.
type Config struct {
	NATSURL    string `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated; empty starts an embedded JetStream server"`
	NATSCreds  string `envconfig:"NATS_CREDS" desc:"NATS credentials file (user JWT + nkey seed)"`
	NATSListen string `envconfig:"NATS_LISTEN" default:"127.0.0.1:4222" desc:"listen address of the embedded NATS server (port 0: any free port)"`
	DataDir    string `envconfig:"DATA_DIR" default:"./comjobs-data" desc:"where the embedded NATS server keeps its JetStream data"`
	Replicas   int    `envconfig:"REPLICAS" default:"1" desc:"replicas of streams and buckets created by setup (1, or 3 on a cluster)"`

	COMBaseURL      string        `envconfig:"COM_BASE_URL" desc:"COM API base URL, e.g. https://us-west.api.greenlake.hpe.com; empty starts the built-in COM simulator"`
	COMTokenURL     string        `envconfig:"COM_TOKEN_URL" desc:"OAuth2 token URL (client credentials)"`
	COMClientID     string        `envconfig:"COM_CLIENT_ID" desc:"OAuth2 client id"`
	COMClientSecret string        `envconfig:"COM_CLIENT_SECRET" secret:"true" desc:"OAuth2 client secret (or COMJOBS_COM_CLIENT_SECRET_FILE)"`
	COMAPIVersion   string        `envconfig:"COM_API_VERSION" default:"v1" desc:"COM jobs API version: v1, v1beta3 or v1beta2"`
	COMTenantACID   string        `envconfig:"COM_TENANT_ACID" desc:"MSP tenant account id, sent as Tenant-Acid"`
	COMRatePerMin   int           `envconfig:"COM_RATE_PER_MINUTE" default:"100" desc:"COM calls per minute this process may make (COM's budget is per API client: split it between replicas)"`
	COMTimeout      time.Duration `envconfig:"COM_TIMEOUT" default:"30s" desc:"timeout of one COM call"`

	SlackToken      string        `envconfig:"SLACK_TOKEN" secret:"true" desc:"Slack bot token (xoxb-...); or COMJOBS_SLACK_TOKEN_FILE"`
	SlackWebhookURL string        `envconfig:"SLACK_WEBHOOK_URL" secret:"true" desc:"Slack incoming webhook URL (at-least-once, one fixed channel); or ..._FILE"`
	SlackChannel    string        `envconfig:"SLACK_CHANNEL" default:"#comjobs" desc:"default Slack channel"`
	SlackAPIURL     string        `envconfig:"SLACK_API_URL" desc:"Slack Web API base URL (default https://slack.com/api/)"`
	SlackPace       time.Duration `envconfig:"SLACK_CHANNEL_INTERVAL" default:"1s" desc:"least time between two posts to one Slack channel (Slack allows about one message per second per channel)"`
	RoutesFile      string        `envconfig:"ROUTES_FILE" desc:"notification routes file (JSON)"`
	NotifySubmitted bool          `envconfig:"NOTIFY_SUBMITTED" default:"false" desc:"also notify when a job is submitted"`
	NotifyRunning   bool          `envconfig:"NOTIFY_RUNNING" default:"false" desc:"also notify when a job starts running"`
	NotifyRejected  bool          `envconfig:"NOTIFY_REJECTED" default:"true" desc:"notify rejected requests"`

	PollInterval  time.Duration `envconfig:"POLL_INTERVAL" default:"10s" desc:"base poll interval; per-template intervals derive from it"`
	StalledRepeat time.Duration `envconfig:"STALLED_REPEAT" default:"1h" desc:"how often a STALLED job is reminded"`
	WebhookSecret string        `envconfig:"WEBHOOK_SECRET" secret:"true" desc:"shared secret COM webhooks must send (X-Comjobs-Webhook-Secret); or ..._FILE"`

	Workers      int    `envconfig:"WORKERS" default:"16" desc:"requests the consumer handles at once (in batches of up to 32)"`
	PolicyFile   string `envconfig:"POLICY_FILE" desc:"authorisation policy file (JSON); without it every source may request everything"`
	MaxEventSize int    `envconfig:"MAX_EVENT_SIZE" default:"65536" desc:"largest accepted request event, bytes"`

	HTTPAddr        string        `envconfig:"HTTP_ADDR" default:"127.0.0.1:8080" desc:"metrics, health and COM webhook listener; empty disables"`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"text" desc:"log format: text or json"`
	LogLevel        string        `envconfig:"LOG_LEVEL" default:"info" desc:"log level: debug, info, warn, error"`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"bound on the graceful drain at shutdown"`
}

// LoadConfig reads the settings from the process environment. Empty
// variables count as unset, so `COMJOBS_NATS_URL=` means the default;
// secrets come from the variable or its _FILE twin. It is not safe to call
// concurrently with other changes to the environment.
func LoadConfig() (Config, error) {
	var cfg Config
	restore := unsetEmpty()
	defer restore()
	if err := envconfig.Process(envPrefix, &cfg); err != nil {
		return cfg, fmt.Errorf("settings: %s", describeEnvconfigError(err))
	}
	if err := loadSecretFiles(&cfg); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// unsetEmpty unsets empty COMJOBS_ variables (envconfig would parse "" as a
// value and fail on numbers and durations) and returns a function that puts
// them back.
func unsetEmpty() func() {
	var unset []string
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, envPrefix+"_") && strings.TrimSpace(v) == "" {
			unset = append(unset, k)
			os.Unsetenv(k)
		}
	}
	return func() {
		for _, k := range unset {
			os.Setenv(k, "")
		}
	}
}

func describeEnvconfigError(err error) string {
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s: cannot use %q as %s (%v)", pe.KeyName, pe.Value, pe.TypeName, pe.Err)
	}
	return err.Error()
}

// loadSecretFiles fills secret fields from COMJOBS_<NAME>_FILE.
func loadSecretFiles(cfg *Config) error {
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Tag.Get("secret") != "true" {
			continue
		}
		name := envPrefix + "_" + f.Tag.Get("envconfig") + "_FILE"
		path, ok := os.LookupEnv(name)
		if !ok || strings.TrimSpace(path) == "" {
			continue
		}
		if v.Field(i).String() != "" {
			return fmt.Errorf("settings: %s: %s is set too: use one of them", name, strings.TrimSuffix(name, "_FILE"))
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("settings: %s: %v", name, err)
		}
		v.Field(i).SetString(strings.TrimSpace(string(b)))
	}
	return nil
}

// Validate checks every setting and names the first bad variable.
func (c *Config) Validate() error {
	bad := func(name, format string, args ...any) error {
		return fmt.Errorf("settings: %s_%s: %s", envPrefix, name, fmt.Sprintf(format, args...))
	}
	if c.NATSURL != "" {
		for _, u := range strings.Split(c.NATSURL, ",") {
			if err := checkURL(strings.TrimSpace(u), "nats", "tls", "ws", "wss"); err != nil {
				return bad("NATS_URL", "%v", err)
			}
		}
	}
	if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
		return bad("NATS_LISTEN", "want host:port, got %q", c.NATSListen)
	}
	if c.Replicas != 1 && c.Replicas != 3 {
		return bad("REPLICAS", "want 1 or 3, got %d", c.Replicas)
	}
	if c.COMBaseURL != "" {
		if err := checkURL(c.COMBaseURL, "https", "http"); err != nil {
			return bad("COM_BASE_URL", "%v", err)
		}
		if c.COMTokenURL == "" {
			return bad("COM_TOKEN_URL", "required when COMJOBS_COM_BASE_URL is set")
		}
		if c.COMClientID == "" {
			return bad("COM_CLIENT_ID", "required when COMJOBS_COM_BASE_URL is set")
		}
		if c.COMClientSecret == "" {
			return bad("COM_CLIENT_SECRET", "required when COMJOBS_COM_BASE_URL is set (or COMJOBS_COM_CLIENT_SECRET_FILE)")
		}
	}
	if c.COMTokenURL != "" {
		if err := checkURL(c.COMTokenURL, "https", "http"); err != nil {
			return bad("COM_TOKEN_URL", "%v", err)
		}
	}
	switch c.COMAPIVersion {
	case "v1", "v1beta3", "v1beta2":
	default:
		return bad("COM_API_VERSION", "want v1, v1beta3 or v1beta2, got %q", c.COMAPIVersion)
	}
	if c.COMRatePerMin < 1 {
		return bad("COM_RATE_PER_MINUTE", "must be at least 1, got %d", c.COMRatePerMin)
	}
	if c.COMTimeout < time.Second {
		return bad("COM_TIMEOUT", "must be at least 1s, got %s", c.COMTimeout)
	}
	if c.SlackToken != "" && c.SlackWebhookURL != "" {
		return bad("SLACK_WEBHOOK_URL", "set either COMJOBS_SLACK_TOKEN or COMJOBS_SLACK_WEBHOOK_URL, not both")
	}
	if c.SlackWebhookURL != "" {
		if err := checkURL(c.SlackWebhookURL, "https", "http"); err != nil {
			return bad("SLACK_WEBHOOK_URL", "not a URL (value hidden)")
		}
	}
	if c.SlackAPIURL != "" {
		if err := checkURL(c.SlackAPIURL, "https", "http"); err != nil {
			return bad("SLACK_API_URL", "%v", err)
		}
	}
	if c.SlackPace < 10*time.Millisecond {
		return bad("SLACK_CHANNEL_INTERVAL", "must be at least 10ms, got %s", c.SlackPace)
	}
	if c.PollInterval < 10*time.Millisecond {
		return bad("POLL_INTERVAL", "must be at least 10ms, got %s", c.PollInterval)
	}
	if c.StalledRepeat < time.Second {
		return bad("STALLED_REPEAT", "must be at least 1s, got %s", c.StalledRepeat)
	}
	if c.Workers < 1 || c.Workers > 1024 {
		return bad("WORKERS", "want 1..1024, got %d", c.Workers)
	}
	if c.MaxEventSize < 1024 || c.MaxEventSize > 1<<20 {
		return bad("MAX_EVENT_SIZE", "want 1024..1048576 bytes, got %d", c.MaxEventSize)
	}
	for name, path := range map[string]string{"POLICY_FILE": c.PolicyFile, "ROUTES_FILE": c.RoutesFile, "NATS_CREDS": c.NATSCreds} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return bad(name, "%v", err)
		}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return bad("LOG_FORMAT", "want text or json, got %q", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return bad("LOG_LEVEL", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("HTTP_ADDR", "want host:port, got %q", c.HTTPAddr)
		}
	}
	if c.ShutdownTimeout < time.Second {
		return bad("SHUTDOWN_TIMEOUT", "must be at least 1s, got %s", c.ShutdownTimeout)
	}
	return nil
}

func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %q", s)
	}
	for _, sc := range schemes {
		if u.Scheme == sc && u.Host != "" {
			return nil
		}
	}
	return fmt.Errorf("want a %s URL with a host, got %q", strings.Join(schemes, "/"), s)
}

// PrintSettings writes every setting with its default and description.
func PrintSettings(w io.Writer) {
	var cfg Config
	t := reflect.TypeOf(cfg)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tDEFAULT\tDESCRIPTION")
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		def := f.Tag.Get("default")
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "%s_%s\t%s\t%s\n", envPrefix, f.Tag.Get("envconfig"), def, f.Tag.Get("desc"))
	}
	tw.Flush()
}
