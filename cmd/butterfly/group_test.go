package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestListGroups_ReadsKeysAsTheIntermediatesDo checks that group ls lists
// what the intermediates route by: a group key whose value does not parse
// still declares its group (said on stderr, not skipped), and a consumer
// key whose name the intermediates reject is skipped, not listed.
func TestListGroups_ReadsKeysAsTheIntermediatesDo(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const prefix = "gl"
	for key, val := range map[string]string{
		registry.GroupKey(prefix, "svc", "g"):              "garbage",
		prefix + "/consumers/svc/g/a b":                    `{"consumer":"a b","group":"g","epoch":1}`,
		registry.ConsumerKey(prefix, "svc", "g", "c1"):     `{"consumer":"c1","group":"g","epoch":2,"role":"stage"}`,
		registry.ConsumerKey(prefix, "svc", "other", "c2"): `{"consumer":"c2","group":"other","epoch":1}`,
	} {
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatalf("Put(%s) = %v", key, err)
		}
	}
	var notes []string
	groups, err := listGroups(ctx, cli, prefix, "svc", func(key string, err error) {
		notes = append(notes, key+": "+err.Error())
	})
	if err != nil {
		t.Fatalf("listGroups() = %v", err)
	}
	var got []string
	for _, g := range groups {
		line := g.Group
		if g.Declared {
			line += " declared"
		}
		for _, c := range g.Consumers {
			line += " " + c.Consumer
			if c.Role != "" {
				line += "(" + c.Role + ")"
			}
		}
		got = append(got, line)
	}
	if want := []string{"g declared c1(stage)", "other c2"}; strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("groups = %q, want %q", got, want)
	}
	if len(notes) != 2 || !strings.Contains(strings.Join(notes, "\n"), "the group is declared all the same") ||
		!strings.Contains(strings.Join(notes, "\n"), prefix+"/consumers/svc/g/a b") {
		t.Errorf("notes = %q, want the malformed group value (declared all the same) and the consumer name the intermediates reject", notes)
	}
	var out strings.Builder
	printGroups(&out, groups, time.Now())
	for _, want := range []string{"CONSUMER  ROLE   EPOCH", "c1        stage  2", "c2        -      1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printGroups() =\n%s\nwant a line containing %q", out.String(), want)
		}
	}
}
