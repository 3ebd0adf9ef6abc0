package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
)

const watchUsage = `Prints the writes of a key, a prefix or the whole keyspace as they happen,
until interrupted (or --count events). Each event is one line: with -w json one
JSON object per line,

  {"type":"put","key":"a","value":"1","revision":7,"create_revision":7,"version":1}
  {"type":"delete","key":"a","revision":9,"resume_token":"AQE..."}

with "prev_value" and "prev_revision" when --prev-kv is given and the key had
a value, and "resume_token" on the last event of each batch the server sent: --resume TOKEN on any node prints exactly the
events after it. Keys and values print as strings (JSON-escaped).

--rev R starts at revision R of each range (every write at or after it);
without it the watch starts now. A revision whose history the cluster no
longer keeps (flotilla start --history-retention) fails with "compacted" and
the revision it is kept from. With --progress, progress notifications print
too, as {"progress":true,"revision":R,"resume_token":...}.`

func newWatchCmd() *cobra.Command {
	var cf clientFlags
	var output, prefix, resume string
	var rev uint64
	var prevKV, progress bool
	var count int
	cmd := &cobra.Command{
		Use:   "watch [KEY] [--prefix P] [--rev R] [--resume TOKEN] [-w json]",
		Short: "Print the writes of a key, a prefix or everything as they happen",
		Long:  watchUsage,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "simple", "json"); err != nil {
				return err
			}
			spec := client.WatchSpec{Prefix: []byte(prefix), Revision: rev, PrevKV: prevKV}
			if len(args) == 1 {
				spec.Key = []byte(args[0])
			}
			if resume != "" {
				t, err := base64.StdEncoding.DecodeString(resume)
				if err != nil {
					return fmt.Errorf("--resume: not a token: %v", err)
				}
				if len(args) == 1 || prefix != "" || rev != 0 {
					return fmt.Errorf("--resume takes no KEY, --prefix or --rev: the token says what and from where")
				}
				spec.Token = t
			}
			if len(args) == 1 && prefix != "" {
				return fmt.Errorf("give KEY or --prefix, not both")
			}
			if count < 0 {
				return fmt.Errorf("--count must not be negative")
			}
			cl, _, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w, err := cl.Watch(ctx, spec)
			if err != nil {
				return err
			}
			defer w.Close()
			n := 0
			for count == 0 || n < count {
				r, err := w.Next(ctx)
				if err != nil {
					if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
						return nil // interrupted
					}
					return err
				}
				if r.Progress && progress {
					printWatchProgress(cmd.OutOrStdout(), r, output == "json")
				}
				for i, ev := range r.Events {
					var token []byte
					if i == len(r.Events)-1 {
						token = r.Token
					}
					if err := printWatchEvent(cmd.OutOrStdout(), ev, token, output == "json"); err != nil {
						return err
					}
					if n++; count > 0 && n == count {
						break
					}
				}
			}
			return nil
		},
	}
	cf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&prefix, "prefix", "", "watch the keys that start with this prefix")
	f.Uint64Var(&rev, "rev", 0, "start at this revision (0: now)")
	f.StringVar(&resume, "resume", "", "resume after an event's resume_token")
	f.BoolVar(&prevKV, "prev-kv", false, "print each key's previous value too")
	f.BoolVar(&progress, "progress", false, "print progress notifications (every 10s while idle)")
	f.IntVar(&count, "count", 0, "exit after this many events (0: run until interrupted)")
	f.StringVarP(&output, "write-out", "w", "simple", "output format: simple or json")
	return cmd
}

// watchLine is one line of flotilla watch -w json (docs/design.md,
// "Contracts").
type watchLine struct {
	Type           string  `json:"type"` // put or delete
	Key            string  `json:"key"`
	Value          string  `json:"value,omitempty"`
	Revision       uint64  `json:"revision"`
	CreateRevision uint64  `json:"create_revision,omitempty"`
	Version        uint64  `json:"version,omitempty"`
	PrevValue      *string `json:"prev_value,omitempty"`
	PrevRevision   uint64  `json:"prev_revision,omitempty"`
	ResumeToken    string  `json:"resume_token,omitempty"`
}

func printWatchEvent(out io.Writer, ev client.WatchEvent, token []byte, asJSON bool) error {
	line := watchLine{Type: "put", Key: string(ev.KV.Key), Value: string(ev.KV.Value),
		Revision: ev.KV.Revision, CreateRevision: ev.KV.CreateRevision, Version: ev.KV.Version}
	if ev.Delete {
		line.Type = "delete"
	}
	if ev.Prev != nil {
		v := string(ev.Prev.Value)
		line.PrevValue, line.PrevRevision = &v, ev.Prev.Revision
	}
	if token != nil {
		line.ResumeToken = base64.StdEncoding.EncodeToString(token)
	}
	if asJSON {
		b, err := json.Marshal(line)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	s := fmt.Sprintf("%s %s", strings.ToUpper(line.Type), line.Key)
	if !ev.Delete {
		s += " " + line.Value
	}
	s += fmt.Sprintf(" (revision %d)", line.Revision)
	if line.PrevValue != nil {
		s += fmt.Sprintf(" (was %s)", *line.PrevValue)
	}
	_, err := fmt.Fprintln(out, s)
	return err
}

func printWatchProgress(out io.Writer, r client.WatchResponse, asJSON bool) {
	if asJSON {
		fmt.Fprintf(out, `{"progress":true,"revision":%d,"resume_token":%q}`+"\n", r.Revision, base64.StdEncoding.EncodeToString(r.Token))
		return
	}
	fmt.Fprintf(out, "progress: every write up to revision %d delivered\n", r.Revision)
}
