// Package api holds the protobuf definition of Flotilla's client API and
// the Go code generated from it. Do not edit the generated files; change
// flotilla.proto and run go generate ./api.
package api

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative flotilla.proto
