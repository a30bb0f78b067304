// Package strictjson checks JSON documents for the ambiguities that Go's
// encoding/json resolves silently: duplicate object keys (the last one wins)
// and keys that differ from a known struct field only in case (encoding/json
// matches field names case-insensitively). Two parsers that resolve such
// ambiguities differently can see two different documents behind one
// digest, so manifest parsing rejects them before decoding.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays and objects.
const MaxDepth = 64

// Object describes the known fields of a JSON object that is decoded into a
// struct. Fields maps each field name to the schema of its value (nil when
// the value is free-form); the schema of an array value applies to each of
// its elements. Objects without a schema are treated as maps: only duplicate
// keys are rejected there.
type Object struct {
	Fields map[string]*Object
}

// Check reports the first ambiguity in data, or a syntax error, or nil. The
// top-level value must be an object described by top. Errors name the path
// of the offending key.
func Check(data []byte, top *Object) error {
	if !utf8.Valid(data) {
		return errors.New("document is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("document is not a JSON object")
	}
	if err := walkObject(dec, top, nil, 1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err != nil {
			return syntaxErr(err)
		}
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func syntaxErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("malformed JSON: %w", err)
}

// path is where a value sits, built into a string only for an error.
type path struct {
	parent *path
	key    string // object key, or
	index  int    // array index when key is ""
	isKey  bool
}

func (p *path) String() string {
	if p == nil {
		return "top level"
	}
	var parts []*path
	for q := p; q != nil; q = q.parent {
		parts = append(parts, q)
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		q := parts[i]
		if !q.isKey {
			b.WriteString("[" + strconv.Itoa(q.index) + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteString(".")
		}
		k := q.key
		if len(k) > 64 {
			k = k[:64] + "..."
		}
		if !plain(k) {
			k = strconv.Quote(k)
		}
		b.WriteString(k)
		if b.Len() > 120 {
			return b.String()[:120] + "..."
		}
	}
	return b.String()
}

// walkObject consumes an object whose '{' was already read.
func walkObject(dec *json.Decoder, schema *Object, at *path, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%s: nesting deeper than %d levels", at, MaxDepth)
	}
	seen := map[string]struct{}{}
	for {
		tok, err := dec.Token()
		if err != nil {
			return syntaxErr(err)
		}
		if d, ok := tok.(json.Delim); ok && d == '}' {
			return nil
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%s: object key is not a string", at)
		}
		kpath := &path{parent: at, key: key, isKey: true}
		if _, dup := seen[key]; dup {
			return fmt.Errorf("%s: duplicate key", kpath)
		}
		seen[key] = struct{}{}
		var child *Object
		if schema != nil {
			var known bool
			child, known = schema.Fields[key]
			if !known {
				for f := range schema.Fields {
					if strings.EqualFold(f, key) {
						return fmt.Errorf("%s: key differs from field %q only in case", kpath, f)
					}
				}
			}
		}
		if err := walkValue(dec, child, kpath, depth); err != nil {
			return err
		}
	}
}

func walkValue(dec *json.Decoder, schema *Object, at *path, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // scalar
	}
	switch d {
	case '{':
		return walkObject(dec, schema, at, depth+1)
	case '[':
		if depth+1 > MaxDepth {
			return fmt.Errorf("%s: nesting deeper than %d levels", at, MaxDepth)
		}
		for i := 0; ; i++ {
			if !dec.More() {
				if _, err := dec.Token(); err != nil { // ']'
					return syntaxErr(err)
				}
				return nil
			}
			if err := walkValue(dec, schema, &path{parent: at, index: i}, depth+1); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("%s: unexpected %q", at, d)
}

func plain(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
