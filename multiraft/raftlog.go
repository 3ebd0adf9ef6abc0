package multiraft

import (
	"context"
	"fmt"
	"log/slog"
	"os"
)

// raftLogger adapts slog to raft.Logger. raft's chatter (elections, term
// changes) goes to Debug, so a healthy cluster stays quiet at Info; its
// warnings and errors keep their level. Panic and Fatal keep raft's
// contract: they do not return.
type raftLogger struct {
	l     *slog.Logger
	group uint64
}

// newRaftLogger returns group's raft logger. The group is added to each
// record rather than bound with With: a bound logger per group cost about
// 200 bytes of each of 10,000 idle replicas.
func newRaftLogger(l *slog.Logger, group uint64) *raftLogger { return &raftLogger{l: l, group: group} }

func (r *raftLogger) log(level slog.Level, msg string) {
	if r.l.Enabled(context.Background(), level) {
		r.l.Log(context.Background(), level, msg, "group", r.group)
	}
}

func (r *raftLogger) Debug(v ...interface{}) { r.log(slog.LevelDebug, fmt.Sprint(v...)) }
func (r *raftLogger) Debugf(f string, v ...interface{}) {
	if r.l.Enabled(context.Background(), slog.LevelDebug) {
		r.log(slog.LevelDebug, fmt.Sprintf(f, v...))
	}
}
func (r *raftLogger) Info(v ...interface{})            { r.Debug(v...) }
func (r *raftLogger) Infof(f string, v ...interface{}) { r.Debugf(f, v...) }
func (r *raftLogger) Warning(v ...interface{})         { r.log(slog.LevelWarn, fmt.Sprint(v...)) }
func (r *raftLogger) Warningf(f string, v ...interface{}) {
	r.log(slog.LevelWarn, fmt.Sprintf(f, v...))
}
func (r *raftLogger) Error(v ...interface{}) { r.log(slog.LevelError, fmt.Sprint(v...)) }
func (r *raftLogger) Errorf(f string, v ...interface{}) {
	r.log(slog.LevelError, fmt.Sprintf(f, v...))
}
func (r *raftLogger) Fatal(v ...interface{}) {
	r.log(slog.LevelError, fmt.Sprint(v...))
	os.Exit(1)
}
func (r *raftLogger) Fatalf(f string, v ...interface{}) {
	r.log(slog.LevelError, fmt.Sprintf(f, v...))
	os.Exit(1)
}
func (r *raftLogger) Panic(v ...interface{}) { panic(fmt.Sprint(v...)) }
func (r *raftLogger) Panicf(f string, v ...interface{}) {
	panic(fmt.Sprintf(f, v...))
}
