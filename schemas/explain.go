package schemas

import (
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// defaultPrinter renders the jsonschema messages explain has no short form for.
var defaultPrinter = message.NewPrinter(language.English)

// problem is one schema violation in short form: a field path and a rule.
type problem struct{ field, rule string }

// maxProblems bounds how many problems one message lists.
const maxProblems = 3

// explain turns a jsonschema validation error into a rejection with reason,
// whose Field is the first problem's path (rooted at root, e.g. "data") and
// whose Message reads like "data.batch_size: must be <= 20".
func explain(reason, root string, err error) *Rejection {
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return &Rejection{Reason: reason, Field: root, Message: root + ": " + err.Error()}
	}
	var ps []problem
	collect(verr, root, &ps)
	if len(ps) == 0 {
		return &Rejection{Reason: reason, Field: root, Message: root + ": does not match its schema"}
	}
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].field < ps[j].field })
	ps = dedupe(ps)
	var b strings.Builder
	for i, p := range ps {
		if i == maxProblems {
			fmt.Fprintf(&b, "; and %d more", len(ps)-maxProblems)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.field)
		b.WriteString(": ")
		b.WriteString(p.rule)
	}
	return &Rejection{Reason: reason, Field: ps[0].field, Message: b.String()}
}

func dedupe(ps []problem) []problem {
	out := ps[:0]
	for i, p := range ps {
		if i > 0 && p == ps[i-1] {
			continue
		}
		out = append(out, p)
	}
	return out
}

// collect appends the leaves of the error tree as problems.
func collect(e *jsonschema.ValidationError, root string, ps *[]problem) {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			collect(c, root, ps)
		}
		return
	}
	field := path(root, e.InstanceLocation)
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		for _, m := range k.Missing {
			*ps = append(*ps, problem{path(root, append(e.InstanceLocation[:len(e.InstanceLocation):len(e.InstanceLocation)], m)), "required"})
		}
	case *kind.AdditionalProperties:
		for _, p := range k.Properties {
			*ps = append(*ps, problem{path(root, append(e.InstanceLocation[:len(e.InstanceLocation):len(e.InstanceLocation)], p)), "unknown field, not allowed"})
		}
	case *kind.DependentRequired:
		for _, m := range k.Missing {
			*ps = append(*ps, problem{path(root, append(e.InstanceLocation[:len(e.InstanceLocation):len(e.InstanceLocation)], m)), fmt.Sprintf("required when %s is set", k.Prop)})
		}
	default:
		*ps = append(*ps, problem{field, rule(e.ErrorKind)})
	}
}

// rule says in a few words what a leaf violation wants.
func rule(k jsonschema.ErrorKind) string {
	switch k := k.(type) {
	case *kind.Type:
		return fmt.Sprintf("must be %s, got %s", strings.Join(k.Want, " or "), k.Got)
	case *kind.Enum:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = display(w)
		}
		return "must be one of " + strings.Join(want, ", ")
	case *kind.Const:
		return "must be " + display(k.Want)
	case *kind.Minimum:
		return "must be >= " + rat(k.Want)
	case *kind.Maximum:
		return "must be <= " + rat(k.Want)
	case *kind.ExclusiveMinimum:
		return "must be > " + rat(k.Want)
	case *kind.ExclusiveMaximum:
		return "must be < " + rat(k.Want)
	case *kind.MultipleOf:
		return "must be a multiple of " + rat(k.Want)
	case *kind.MinLength:
		return fmt.Sprintf("must be at least %d characters long", k.Want)
	case *kind.MaxLength:
		return fmt.Sprintf("must be at most %d characters long", k.Want)
	case *kind.Pattern:
		return fmt.Sprintf("must match %s", k.Want)
	case *kind.Format:
		return fmt.Sprintf("must be a valid %s", k.Want)
	case *kind.MinItems:
		return fmt.Sprintf("must have at least %d items", k.Want)
	case *kind.MaxItems:
		return fmt.Sprintf("must have at most %d items", k.Want)
	case *kind.UniqueItems:
		return "items must be unique"
	case *kind.MinProperties:
		return fmt.Sprintf("must have at least %d fields", k.Want)
	case *kind.MaxProperties:
		return fmt.Sprintf("must have at most %d fields", k.Want)
	case *kind.PropertyNames:
		return fmt.Sprintf("field name %q is not allowed", k.Property)
	case *kind.FalseSchema:
		return "not allowed"
	case *kind.Not:
		return "not allowed in this combination"
	case *kind.OneOf:
		return "must match exactly one of the allowed forms"
	}
	return k.LocalizedString(defaultPrinter)
}

// path renders an instance location: fields joined with ".", array indexes
// as "[i]".
func path(root string, loc []string) string {
	var b strings.Builder
	b.WriteString(root)
	for _, tok := range loc {
		if _, err := strconv.Atoi(tok); err == nil {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

func display(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

func rat(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}
