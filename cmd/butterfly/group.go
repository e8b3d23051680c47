package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/registry"
)

// groupEntry is one group of `butterfly group ls`, and its JSON form.
type groupEntry struct {
	Service   string          `json:"service"`
	Group     string          `json:"group"`
	Declared  bool            `json:"declared"`
	Created   time.Time       `json:"created,omitzero"`
	CreatedBy string          `json:"createdBy,omitempty"`
	Key       string          `json:"key"`
	Consumers []consumerEntry `json:"consumers"`
}

// consumerEntry is one registered consumer of a group.
type consumerEntry struct {
	Consumer string    `json:"consumer"`
	Epoch    uint64    `json:"epoch"`
	Draining bool      `json:"draining"`
	Host     string    `json:"host,omitempty"`
	Version  string    `json:"version,omitempty"`
	Started  time.Time `json:"started"`
	// Role is "consumer" or "stage", "" for a value that names none.
	Role string `json:"role,omitempty"`
	Key  string `json:"key"`
}

func newGroupCommand(r *rootCommand) *cobra.Command {
	g := &cobra.Command{
		Use:   "group",
		Short: "List, declare and delete consumer groups",
		Long: `Consumer groups are durable subscriptions, declared in etcd at
<prefix>/groups/<service>/<group>. Every message an intermediate admits while a
group is declared is acknowledged to its producer only once a consumer of that
group handled it; while the group has no registered consumer, its messages
stay unacknowledged at their producers. A consumer declares its group when it
starts (consume --create-group, the default).

Deleting a group releases what waits for it: messages in flight count as
handled for that group (the other groups still get them), messages admitted
afterwards are not routed to it, and its consumers stop with an error.`,
		Example: `  butterfly group ls
  butterfly group create audit --service intermediate
  butterfly group delete audit`,
		// Without a subcommand, as butterfly alone: the help, on stderr,
		// and a usage error; an unknown one is a usage error naming it.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("%s: unknown subcommand %q (it has ls, create and delete)", cmd.CommandPath(), args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Help()
			return usagef("a subcommand is required: %s ls, create or delete", cmd.CommandPath())
		},
	}
	var service string
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the groups with their registered consumers",
		Long: `List the declared groups of every service (or of --service), each with
its registered consumers: epoch, draining, age; --json adds each key, host,
version and start time. A group with consumers but no declaration is listed
as not declared.`,
		Example: `  butterfly group ls
  butterfly group ls --service intermediate --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if service != "" {
				if err := registry.CheckName("--service", service); err != nil {
					return &usageError{err}
				}
			}
			cli, err := r.etcdClient()
			if err != nil {
				return err
			}
			defer cli.Close()
			groups, err := listGroups(cmd.Context(), cli, r.prefix, service, skipping(cmd))
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), groups)
			}
			printGroups(cmd.OutOrStdout(), groups, time.Now())
			return nil
		},
	}
	ls.Flags().StringVar(&service, "service", "", "only this service (default all)")
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	change := func(use, short, long, example string, apply func(ctx context.Context, cli *clientv3.Client, svc, name string) (string, error)) *cobra.Command {
		var svc string
		c := &cobra.Command{
			Use:     use + " GROUP",
			Short:   short,
			Long:    long,
			Example: example,
			Args: func(cmd *cobra.Command, args []string) error {
				if len(args) != 1 {
					return usagef("%s takes one group name, got %d arguments", cmd.CommandPath(), len(args))
				}
				return nil
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := registry.CheckName("--service", svc); err != nil {
					return &usageError{err}
				}
				if err := registry.CheckName("group", args[0]); err != nil {
					return &usageError{err}
				}
				cli, err := r.etcdClient()
				if err != nil {
					return err
				}
				defer cli.Close()
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				defer cancel()
				msg, err := apply(ctx, cli, svc, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), msg)
				return nil
			},
		}
		c.Flags().StringVar(&svc, "service", registry.DefaultService, "service of the group")
		return c
	}
	create := change("create", "Declare a group",
		`Declare GROUP of --service in etcd: from now on every message an
intermediate admits is acknowledged to its producer only once a consumer of
GROUP handled it. Declaring a group already declared changes nothing.`,
		`  butterfly group create audit
  butterfly group create audit --service intermediate`, func(ctx context.Context, cli *clientv3.Client, svc, name string) (string, error) {
			created, err := registry.CreateGroup(ctx, cli, svc, name, "operator", registry.WithPrefix(r.prefix))
			key := registry.GroupKey(r.prefix, svc, name)
			switch {
			case err != nil:
				return "", err
			case created:
				return "declared " + key, nil
			}
			return key + " was already declared", nil
		})
	del := change("delete", "Delete a group: what waits for it is released",
		`Delete GROUP of --service from etcd. What waits for it is released:
messages in flight count as handled for it (the other groups still get
them), messages admitted afterwards are not routed to it, and its consumers
stop with an error. Deleting a group that is not declared exits 1.`,
		`  butterfly group delete audit
  butterfly group delete audit --service intermediate`, func(ctx context.Context, cli *clientv3.Client, svc, name string) (string, error) {
			existed, err := registry.DeleteGroup(ctx, cli, svc, name, registry.WithPrefix(r.prefix))
			key := registry.GroupKey(r.prefix, svc, name)
			switch {
			case err != nil:
				return "", err
			case !existed:
				return "", fmt.Errorf("group %s is not declared (%s)", name, key)
			}
			return "deleted " + key, nil
		})
	g.AddCommand(ls, create, del)
	return g
}

// listGroups reads the groups and consumer registrations under prefix (of
// one service, or of all when service is empty), sorted by service and group.
func listGroups(ctx context.Context, cli *clientv3.Client, prefix, service string, bad func(key string, err error)) ([]groupEntry, error) {
	groupsRoot, consRoot := prefix+"/groups/", prefix+"/consumers/"
	if service != "" {
		groupsRoot, consRoot = registry.GroupsPrefix(prefix, service), registry.ConsumersPrefix(prefix, service)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Txn(ctx).Then(clientv3.OpGet(groupsRoot, clientv3.WithPrefix()), clientv3.OpGet(consRoot, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, etcdReadError(cli, groupsRoot+" and "+consRoot, err)
	}
	byKey := map[[2]string]*groupEntry{}
	get := func(svc, group string) *groupEntry {
		e := byKey[[2]string{svc, group}]
		if e == nil {
			e = &groupEntry{Service: svc, Group: group, Key: registry.GroupKey(prefix, svc, group), Consumers: []consumerEntry{}}
			byKey[[2]string{svc, group}] = e
		}
		return e
	}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		key := string(kv.Key)
		parts := strings.Split(strings.TrimPrefix(key, prefix+"/groups/"), "/")
		if len(parts) != 2 {
			bad(key, fmt.Errorf("key is not %s/groups/<service>/<group>", prefix))
			continue
		}
		if err := registry.CheckName("group", parts[1]); err != nil {
			bad(key, err)
			continue
		}
		// The key declares the group, as the intermediates read it; a
		// value that does not parse only loses its details.
		v, err := registry.ParseGroupValue(kv.Value)
		if err != nil {
			bad(key, listedAnyway{fmt.Errorf("%w; the group is declared all the same: the key declares it", err)})
		}
		e := get(parts[0], parts[1])
		e.Declared, e.Created, e.CreatedBy = true, v.Created, v.CreatedBy
	}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		key := string(kv.Key)
		parts := strings.Split(strings.TrimPrefix(key, prefix+"/consumers/"), "/")
		if len(parts) != 3 {
			bad(key, fmt.Errorf("key is not %s/consumers/<service>/<group>/<consumer>", prefix))
			continue
		}
		v, err := registry.ParseConsumerValue(parts[1], parts[2], kv.Value)
		if err != nil {
			bad(key, err)
			continue
		}
		e := get(parts[0], parts[1])
		e.Consumers = append(e.Consumers, consumerEntry{Consumer: parts[2], Epoch: v.Epoch, Draining: v.Draining, Host: v.Host, Version: v.Version, Started: v.Started, Role: v.Role, Key: key})
	}
	groups := []groupEntry{}
	for _, e := range byKey {
		sort.Slice(e.Consumers, func(i, j int) bool { return e.Consumers[i].Consumer < e.Consumers[j].Consumer })
		groups = append(groups, *e)
	}
	sort.Slice(groups, func(i, j int) bool {
		if groups[i].Service != groups[j].Service {
			return groups[i].Service < groups[j].Service
		}
		return groups[i].Group < groups[j].Group
	})
	return groups, nil
}

// printGroups prints one row per consumer, and one per group without any.
func printGroups(w io.Writer, groups []groupEntry, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tGROUP\tDECLARED\tCONSUMER\tROLE\tEPOCH\tDRAINING\tAGE")
	for _, g := range groups {
		if len(g.Consumers) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%t\t-\t-\t-\t-\t-\n", g.Service, g.Group, g.Declared)
		}
		for _, c := range g.Consumers {
			age := "-"
			if !c.Started.IsZero() {
				age = now.Sub(c.Started).Truncate(time.Second).String()
			}
			role := cmp.Or(c.Role, "-")
			fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\t%d\t%t\t%s\n", g.Service, g.Group, g.Declared, c.Consumer, role, c.Epoch, c.Draining, age)
		}
	}
	tw.Flush()
}
