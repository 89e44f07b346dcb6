package comsim

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// The list filter is the OData subset COM documents: comparisons eq ne gt ge
// lt le, "in (...)", and/or/not, parentheses, contains(field,'text'), string
// literals in single quotes ('' escapes a quote), unquoted RFC 3339
// datetimes, numbers and null.

// valKind is the type of a filterable field or a literal.
type valKind int

const (
	kString valKind = iota + 1
	kTime
	kNumber
	kNull
)

// value is a field's value or a literal.
type value struct {
	kind valKind
	s    string
	t    time.Time
	n    float64
}

// filterFields are the fields a filter or sort may name, with their kinds.
var filterFields = map[string]valKind{
	"id": kString, "parentJobId": kString, "name": kString, "state": kString,
	"resultCode": kString, "status": kString, "resource/id": kString,
	"resource/type": kString, "jobTemplate": kString,
	"createdAt": kTime, "updatedAt": kTime, "generation": kNumber,
}

// fieldOf returns a job's value of a filterable field; absent optional
// fields are null.
func fieldOf(j *job, name string) value {
	str := func(s string) value {
		if s == "" {
			return value{kind: kNull}
		}
		return value{kind: kString, s: s}
	}
	switch name {
	case "id":
		return str(j.id)
	case "parentJobId":
		return str(j.parentID)
	case "name":
		return str(j.name)
	case "state":
		return str(j.state)
	case "resultCode":
		return str(j.resultCode)
	case "status":
		return str(j.status)
	case "resource/id":
		return str(j.resID)
	case "resource/type":
		return str(j.resType)
	case "jobTemplate":
		return str(j.templateID)
	case "createdAt":
		return value{kind: kTime, t: j.createdAt}
	case "updatedAt":
		return value{kind: kTime, t: j.updatedAt}
	case "generation":
		return value{kind: kNumber, n: float64(j.generation)}
	}
	return value{kind: kNull}
}

// predicate is a compiled filter.
type predicate func(j *job) bool

// filterError is a filter COM would refuse (400).
type filterError struct{ msg string }

func (e *filterError) Error() string { return "invalid filter: " + e.msg }

// compiledFilter is a parsed filter plus what the list can use to avoid a
// full scan: the bound of a top-level "updatedAt gt|ge X" conjunct.
type compiledFilter struct {
	match        predicate
	updatedAfter time.Time // zero if none
	inclusive    bool      // ge rather than gt
}

// parseFilter compiles an OData filter. The empty filter matches all.
func parseFilter(src string) (*compiledFilter, error) {
	cf := &compiledFilter{match: func(*job) bool { return true }}
	if strings.TrimSpace(src) == "" {
		return cf, nil
	}
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.pos < len(p.toks) {
		return nil, &filterError{fmt.Sprintf("unexpected %q", p.toks[p.pos].text)}
	}
	cf.match = n.eval
	cf.updatedAfter, cf.inclusive = n.updatedBound()
	return cf, nil
}

type tokKind int

const (
	tIdent tokKind = iota + 1 // field names, operators, keywords
	tString
	tNumber
	tTime
	tLParen
	tRParen
	tComma
)

type token struct {
	kind tokKind
	text string
	val  value
}

func lex(src string) ([]token, error) {
	var toks []token
	rs := []rune(src)
	for i := 0; i < len(rs); {
		c := rs[i]
		switch {
		case unicode.IsSpace(c):
			i++
		case c == '(':
			toks = append(toks, token{kind: tLParen, text: "("})
			i++
		case c == ')':
			toks = append(toks, token{kind: tRParen, text: ")"})
			i++
		case c == ',':
			toks = append(toks, token{kind: tComma, text: ","})
			i++
		case c == '\'':
			var b strings.Builder
			i++
			closed := false
			for i < len(rs) {
				if rs[i] == '\'' {
					if i+1 < len(rs) && rs[i+1] == '\'' {
						b.WriteRune('\'')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				b.WriteRune(rs[i])
				i++
			}
			if !closed {
				return nil, &filterError{"unterminated string literal"}
			}
			toks = append(toks, token{kind: tString, text: b.String(), val: value{kind: kString, s: b.String()}})
		case unicode.IsDigit(c) || c == '-' || c == '+':
			j := i
			for j < len(rs) && !unicode.IsSpace(rs[j]) && rs[j] != ')' && rs[j] != ',' && rs[j] != '(' {
				j++
			}
			text := string(rs[i:j])
			i = j
			if strings.Contains(text, "T") && strings.Count(text, "-") >= 2 {
				t, err := time.Parse(time.RFC3339Nano, text)
				if err != nil {
					return nil, &filterError{fmt.Sprintf("bad datetime %q", text)}
				}
				toks = append(toks, token{kind: tTime, text: text, val: value{kind: kTime, t: t}})
				continue
			}
			n, err := strconv.ParseFloat(text, 64)
			if err != nil {
				return nil, &filterError{fmt.Sprintf("bad number %q", text)}
			}
			toks = append(toks, token{kind: tNumber, text: text, val: value{kind: kNumber, n: n}})
		case unicode.IsLetter(c) || c == '_':
			j := i
			for j < len(rs) && (unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j]) || rs[j] == '_' || rs[j] == '/' || rs[j] == '.') {
				j++
			}
			toks = append(toks, token{kind: tIdent, text: string(rs[i:j])})
			i = j
		default:
			return nil, &filterError{fmt.Sprintf("unexpected character %q", c)}
		}
	}
	return toks, nil
}

// node is a filter expression.
type node interface {
	eval(j *job) bool
	// updatedBound returns the bound of "updatedAt gt|ge X" if this node
	// implies it, so a list can start from the updatedAt index.
	updatedBound() (time.Time, bool)
}

type andNode struct{ l, r node }
type orNode struct{ l, r node }
type notNode struct{ n node }
type cmpNode struct {
	field string
	op    string
	lit   value
}
type inNode struct {
	field string
	lits  []value
}
type containsNode struct{ field, sub string }

func (n andNode) eval(j *job) bool { return n.l.eval(j) && n.r.eval(j) }
func (n orNode) eval(j *job) bool  { return n.l.eval(j) || n.r.eval(j) }
func (n notNode) eval(j *job) bool { return !n.n.eval(j) }
func (n inNode) eval(j *job) bool {
	v := fieldOf(j, n.field)
	for _, l := range n.lits {
		if c, ok := compare(v, l); ok && c == 0 {
			return true
		}
	}
	return false
}
func (n containsNode) eval(j *job) bool {
	v := fieldOf(j, n.field)
	return v.kind == kString && strings.Contains(strings.ToLower(v.s), strings.ToLower(n.sub))
}
func (n cmpNode) eval(j *job) bool {
	v := fieldOf(j, n.field)
	if n.lit.kind == kNull || v.kind == kNull {
		same := v.kind == n.lit.kind
		switch n.op {
		case "eq":
			return same
		case "ne":
			return !same
		}
		return false
	}
	c, ok := compare(v, n.lit)
	if !ok {
		return n.op == "ne"
	}
	switch n.op {
	case "eq":
		return c == 0
	case "ne":
		return c != 0
	case "gt":
		return c > 0
	case "ge":
		return c >= 0
	case "lt":
		return c < 0
	case "le":
		return c <= 0
	}
	return false
}

func (n andNode) updatedBound() (time.Time, bool) {
	if t, inc := n.l.updatedBound(); !t.IsZero() {
		return t, inc
	}
	return n.r.updatedBound()
}
func (orNode) updatedBound() (time.Time, bool)       { return time.Time{}, false }
func (notNode) updatedBound() (time.Time, bool)      { return time.Time{}, false }
func (inNode) updatedBound() (time.Time, bool)       { return time.Time{}, false }
func (containsNode) updatedBound() (time.Time, bool) { return time.Time{}, false }
func (n cmpNode) updatedBound() (time.Time, bool) {
	if n.field == "updatedAt" && n.lit.kind == kTime && (n.op == "gt" || n.op == "ge") {
		return n.lit.t, n.op == "ge"
	}
	return time.Time{}, false
}

// compare orders a field value against a literal of a compatible kind.
func compare(v, l value) (int, bool) {
	switch {
	case v.kind == kString && l.kind == kString:
		return strings.Compare(v.s, l.s), true
	case v.kind == kTime && l.kind == kTime:
		return v.t.Compare(l.t), true
	case v.kind == kNumber && l.kind == kNumber:
		switch {
		case v.n < l.n:
			return -1, true
		case v.n > l.n:
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() *token {
	if p.pos < len(p.toks) {
		return &p.toks[p.pos]
	}
	return nil
}

func (p *parser) keyword(kw string) bool {
	t := p.peek()
	if t != nil && t.kind == tIdent && strings.EqualFold(t.text, kw) {
		p.pos++
		return true
	}
	return false
}

func (p *parser) expect(k tokKind, what string) error {
	t := p.peek()
	if t == nil || t.kind != k {
		return &filterError{"expected " + what}
	}
	p.pos++
	return nil
}

func (p *parser) or() (node, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.keyword("or") {
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = orNode{l, r}
	}
	return l, nil
}

func (p *parser) and() (node, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for p.keyword("and") {
		r, err := p.unary()
		if err != nil {
			return nil, err
		}
		l = andNode{l, r}
	}
	return l, nil
}

func (p *parser) unary() (node, error) {
	if p.keyword("not") {
		n, err := p.unary()
		if err != nil {
			return nil, err
		}
		return notNode{n}, nil
	}
	return p.primary()
}

func (p *parser) primary() (node, error) {
	t := p.peek()
	if t == nil {
		return nil, &filterError{"unexpected end of filter"}
	}
	if t.kind == tLParen {
		p.pos++
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		return n, p.expect(tRParen, "')'")
	}
	if t.kind != tIdent {
		return nil, &filterError{fmt.Sprintf("expected a field name, got %q", t.text)}
	}
	p.pos++
	if strings.EqualFold(t.text, "contains") {
		return p.contains()
	}
	field := t.text
	if _, ok := filterFields[field]; !ok {
		return nil, &filterError{fmt.Sprintf("unknown field %q", field)}
	}
	opTok := p.peek()
	if opTok == nil || opTok.kind != tIdent {
		return nil, &filterError{fmt.Sprintf("expected an operator after %q", field)}
	}
	p.pos++
	op := strings.ToLower(opTok.text)
	switch op {
	case "eq", "ne", "gt", "ge", "lt", "le":
		lit, err := p.literal(field)
		if err != nil {
			return nil, err
		}
		return cmpNode{field: field, op: op, lit: lit}, nil
	case "in":
		if err := p.expect(tLParen, "'(' after in"); err != nil {
			return nil, err
		}
		var lits []value
		for {
			lit, err := p.literal(field)
			if err != nil {
				return nil, err
			}
			lits = append(lits, lit)
			if p.peek() != nil && p.peek().kind == tComma {
				p.pos++
				continue
			}
			break
		}
		return inNode{field: field, lits: lits}, p.expect(tRParen, "')' closing in")
	}
	return nil, &filterError{fmt.Sprintf("unknown operator %q", opTok.text)}
}

func (p *parser) contains() (node, error) {
	if err := p.expect(tLParen, "'(' after contains"); err != nil {
		return nil, err
	}
	f := p.peek()
	if f == nil || f.kind != tIdent || filterFields[f.text] != kString {
		return nil, &filterError{"contains needs a text field"}
	}
	p.pos++
	if err := p.expect(tComma, "','"); err != nil {
		return nil, err
	}
	s := p.peek()
	if s == nil || s.kind != tString {
		return nil, &filterError{"contains needs a string literal"}
	}
	p.pos++
	return containsNode{field: f.text, sub: s.text}, p.expect(tRParen, "')'")
}

// literal reads a literal for field, checking its kind: time fields take
// datetimes (quoted or not), generation takes numbers, text fields take
// strings; null goes anywhere.
func (p *parser) literal(field string) (value, error) {
	t := p.peek()
	if t == nil {
		return value{}, &filterError{"expected a value"}
	}
	p.pos++
	want := filterFields[field]
	if t.kind == tIdent && t.text == "null" {
		return value{kind: kNull}, nil
	}
	switch {
	case want == kString && t.kind == tString,
		want == kTime && t.kind == tTime,
		want == kNumber && t.kind == tNumber:
		return t.val, nil
	case want == kTime && t.kind == tString:
		tm, err := time.Parse(time.RFC3339Nano, t.text)
		if err != nil {
			return value{}, &filterError{fmt.Sprintf("bad datetime %q for %s", t.text, field)}
		}
		return value{kind: kTime, t: tm}, nil
	}
	return value{}, &filterError{fmt.Sprintf("value %q does not suit field %s", t.text, field)}
}
