package main

import (
	"context"
	"encoding/json"
	"errors"
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

// lsEntry is one row of `butterfly ls`, and its JSON form.
type lsEntry struct {
	Service  string    `json:"service"`
	Instance string    `json:"instance"`
	Addr     string    `json:"addr"`
	Epoch    uint64    `json:"epoch"`
	Draining bool      `json:"draining"`
	Weight   uint32    `json:"weight,omitempty"`
	Zone     string    `json:"zone,omitempty"`
	Version  string    `json:"version,omitempty"`
	Started  time.Time `json:"started"`
	Key      string    `json:"key"`
}

func newLsCommand(r *rootCommand) *cobra.Command {
	var service string
	var asJSON bool
	c := &cobra.Command{
		Use:   "ls",
		Short: "List the registered instances, groups and consumers",
		Long: `List the instances registered in etcd under <prefix>/services/, with their
service, instance name, address, epoch, draining flag and age, then the
consumer groups (<prefix>/groups/) with their registered consumers
(<prefix>/consumers/). Values that are not valid registrations are reported on
stderr and skipped. --json prints the instances only; butterfly group ls
--json prints the groups.`,
		Example: `  butterfly ls
  butterfly ls --service intermediate --json
  BUTTERFLY_ETCD_ENDPOINTS=10.0.0.5:2379 butterfly ls`,
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
			entries, err := listInstances(cmd.Context(), cli, r.prefix, service, skipping(cmd))
			if err != nil {
				return err
			}
			sayNoneRegistered(cmd.ErrOrStderr(), entries, r.prefix, service)
			if asJSON {
				return printJSON(cmd.OutOrStdout(), entries)
			}
			groups, err := listGroups(cmd.Context(), cli, r.prefix, service, skipping(cmd))
			if err != nil {
				return err
			}
			printInstances(cmd.OutOrStdout(), entries, time.Now())
			fmt.Fprintln(cmd.OutOrStdout())
			printGroups(cmd.OutOrStdout(), groups, time.Now())
			return nil
		},
	}
	c.Flags().StringVar(&service, "service", "", "only this service (default all)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return c
}

// instancesRoot is the key under which the instances of service (of every
// service when it is empty) are registered.
func instancesRoot(prefix, service string) string {
	if service != "" {
		return registry.ServicesPrefix(prefix, service)
	}
	return prefix + "/services/"
}

// sayNoneRegistered says on w where ls or status looked when they found no
// instance: an empty table says nothing of a --prefix or --service that
// names nothing.
func sayNoneRegistered[E any](w io.Writer, entries []E, prefix, service string) {
	if len(entries) > 0 {
		return
	}
	flags := fmt.Sprintf("--prefix %q", prefix)
	if service != "" {
		flags += fmt.Sprintf(", --service %q", service)
	}
	fmt.Fprintf(w, "butterfly: no instance is registered under %s (%s)\n", instancesRoot(prefix, service), flags)
}

// listInstances reads every registration under prefix (of one service, or of
// all when service is empty), sorted by service and instance.
func listInstances(ctx context.Context, cli *clientv3.Client, prefix, service string, bad func(key string, err error)) ([]lsEntry, error) {
	root := instancesRoot(prefix, service)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, root, clientv3.WithPrefix())
	if err != nil {
		return nil, etcdReadError(cli, root, err)
	}
	entries := []lsEntry{}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		parts := strings.Split(strings.TrimPrefix(key, prefix+"/services/"), "/")
		if len(parts) != 2 {
			bad(key, fmt.Errorf("key is not %s/services/<service>/<instance>", prefix))
			continue
		}
		v, err := registry.ParseValue(parts[1], kv.Value)
		if err != nil {
			bad(key, err)
			continue
		}
		entries = append(entries, lsEntry{
			Service: parts[0], Instance: parts[1], Addr: v.Addr, Epoch: v.Metadata.Epoch,
			Draining: v.Metadata.Draining, Weight: v.Metadata.Weight, Zone: v.Metadata.Zone,
			Version: v.Metadata.Version, Started: v.Metadata.Started, Key: key,
		})
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].Service != entries[j].Service {
			return entries[i].Service < entries[j].Service
		}
		return entries[i].Instance < entries[j].Instance
	})
	return entries, nil
}

func printInstances(w io.Writer, entries []lsEntry, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tADDRESS\tEPOCH\tDRAINING\tAGE")
	for _, e := range entries {
		age := "-"
		if !e.Started.IsZero() {
			age = now.Sub(e.Started).Truncate(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%t\t%s\n", e.Service, e.Instance, e.Addr, e.Epoch, e.Draining, age)
	}
	tw.Flush()
}

// skipping reports a key that holds no valid value on stderr; ls and group
// ls skip such keys, except where the error is a listedAnyway.
func skipping(cmd *cobra.Command) func(key string, err error) {
	return func(key string, err error) {
		if errors.As(err, new(listedAnyway)) {
			fmt.Fprintf(cmd.ErrOrStderr(), "butterfly: %s: %v\n", key, err)
			return
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "butterfly: skipping %s: %v\n", key, err)
	}
}

// listedAnyway is a problem with a key that is listed all the same: a
// group key whose value does not parse still declares its group.
type listedAnyway struct{ error }

func (e listedAnyway) Unwrap() error { return e.error }

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
