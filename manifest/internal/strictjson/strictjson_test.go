package strictjson

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	desc := &Object{Fields: map[string]*Object{"digest": nil, "size": nil, "annotations": nil}}
	top := &Object{Fields: map[string]*Object{"mediaType": nil, "layers": desc, "config": desc}}
	tests := []struct {
		desc string
		in   string
		msg  string // empty: accepted
	}{
		{"plain", `{"mediaType":"a","layers":[{"digest":"x","size":1}],"extra":{"deep":[1,{"k":null}]}}`, ""},
		{"duplicate map key allowed nowhere", `{"config":{"annotations":{"a":"1","a":"2"}}}`, `config.annotations.a: duplicate key`},
		{"map keys differing in case are fine", `{"config":{"annotations":{"a":"1","A":"2"}}}`, ""},
		{"unknown keys differing in case are fine", `{"x":1,"X":2}`, ""},
		{"duplicate top-level key", `{"mediaType":"a","mediaType":"b"}`, `mediaType: duplicate key`},
		{"case variant at top level", `{"MEDIATYPE":"a"}`, `only in case`},
		{"case variant in array element", `{"layers":[{"digest":"x"},{"Digest":"y"}]}`, `layers[1].Digest: key differs`},
		{"long-s folds to s", "{\"layers\":[{\"\u017fize\":1}]}", `only in case`},
		{"escaped key is compared decoded", `{"media\u0054ype":"a","mediaType":"b"}`, `duplicate key`},
		{"odd key quoted in path", `{"config":{"annotations":{"a b":1,"a b":2}}}`, `"a b": duplicate key`},
		{"not an object", `"x"`, `not a JSON object`},
		{"trailing", `{} x`, `malformed JSON`},
		{"second value", `{} {}`, `trailing data`},
		{"truncated", `{"a":`, `malformed JSON`},
		{"bad UTF-8", "{\"a\":\"\xc3\"}", `UTF-8`},
		{"huge number is fine", `{"size":1e999999}`, ""},
		{"too deep", `{"x":` + strings.Repeat(`{"x":`, MaxDepth) + `1` + strings.Repeat(`}`, MaxDepth+1), `nesting deeper`},
		{"deep but allowed", `{"x":` + strings.Repeat(`[`, MaxDepth-2) + strings.Repeat(`]`, MaxDepth-2) + `}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			err := Check([]byte(tt.in), top)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("Check(%s) = %v, want nil", tt.in, err)
				}
				if !json.Valid([]byte(tt.in)) {
					t.Fatal("accepted invalid JSON")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Check(%s) = %v, want error containing %q", tt.in, err, tt.msg)
			}
		})
	}
}

// FuzzCheck: never panics, and never accepts what encoding/json rejects.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,{"b":null}]}`, `{"a":1,"a":2}`, `{"A":1}`, `[`} {
		f.Add([]byte(s))
	}
	top := &Object{Fields: map[string]*Object{"a": {Fields: map[string]*Object{"b": nil}}}}
	f.Fuzz(func(t *testing.T, data []byte) {
		if Check(data, top) == nil {
			var v map[string]any
			if err := json.Unmarshal(data, &v); err != nil {
				t.Fatalf("accepted %q which encoding/json rejects: %v", data, err)
			}
		}
	})
}
