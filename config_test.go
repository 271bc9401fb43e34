package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"regexp"
	"testing"
)

func TestConfig_READMEFlagTableMatchesHelp(t *testing.T) {
	var help bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h = %v, want flag.ErrHelp", err)
	}
	// -h: "  -name (ENV, default "value")" or, for a flag without one, "  -name".
	helpLine := regexp.MustCompile(`(?m)^  -(\S+)(?: \((\w+), default "(.*)"\))?$`)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// README: "| `-name` | `ENV` ... | `value` ... | what |"; an empty cell for none.
	row := regexp.MustCompile("(?m)^\\| `-([a-z-]+)` \\| (?:`(\\w+)`[^|]*)?\\| (?:`([^`]*)`[^|]*)?\\|")
	documented := make(map[string][2]string)
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = [2]string{m[2], m[3]}
	}
	flags := helpLine.FindAllStringSubmatch(help.String(), -1)
	if len(flags) < 10 {
		t.Fatalf("found %d flags in -h output, want them all:\n%s", len(flags), help.String())
	}
	for _, f := range flags {
		name, env, def := f[1], f[2], f[3]
		doc, ok := documented[name]
		if !ok {
			t.Errorf("-%s is in -h but not in the README's flag table", name)
			continue
		}
		if env == "" && def == "" {
			def = doc[1] // a flag without an environment variable shows no default in -h
		}
		if doc != [2]string{env, def} {
			t.Errorf("-%s: README says env %q, default %q; -h says %q, %q", name, doc[0], doc[1], env, def)
		}
		delete(documented, name)
	}
	for name := range documented {
		t.Errorf("the README's flag table lists -%s, which -h does not know", name)
	}
}
