package schemas

import (
	"embed"
	"fmt"
	"io/fs"
)

// files holds the JSON Schemas (draft 2020-12) of every event's data. The
// same files are in the source tree under schemas/json/, for readers and
// other languages.
//
//go:embed json/*.json
var files embed.FS

// SchemaBase is the common prefix of every schema's $id.
const SchemaBase = "https://comjobs.dev/schemas/"

// Data schemas: the $id of each event's data schema, and the value of the
// CloudEvents dataschema attribute of events of that type. The version in the
// name changes only with an incompatible change to the data.
const (
	DataSchemaRequested    = SchemaBase + "requested.v1.json"
	DataSchemaSubmitted    = SchemaBase + "submitted.v1.json"
	DataSchemaRejected     = SchemaBase + "rejected.v1.json"
	DataSchemaStateChanged = SchemaBase + "state-changed.v1.json"
	DataSchemaOverdue      = SchemaBase + "overdue.v1.json"
)

// eventSchemas maps each event type to its data schema's $id and file.
var eventSchemas = []struct{ typ, id, file string }{
	{TypeRequested, DataSchemaRequested, "json/requested.v1.json"},
	{TypeSubmitted, DataSchemaSubmitted, "json/submitted.v1.json"},
	{TypeRejected, DataSchemaRejected, "json/rejected.v1.json"},
	{TypeStateChanged, DataSchemaStateChanged, "json/state-changed.v1.json"},
	{TypeOverdue, DataSchemaOverdue, "json/overdue.v1.json"},
}

// DataSchema returns the dataschema of events of eventType, and false for a
// type comjobs does not know.
func DataSchema(eventType string) (string, bool) {
	for _, s := range eventSchemas {
		if s.typ == eventType {
			return s.id, true
		}
	}
	return "", false
}

// Files returns the schema files, named <name>.v<N>.json at the root of the
// returned file system (e.g. "requested.v1.json"), for serving or printing.
func Files() fs.FS {
	sub, err := fs.Sub(files, "json")
	if err != nil {
		panic(fmt.Sprintf("schemas: embedded files: %v", err)) // cannot happen: the directory is embedded
	}
	return sub
}

// SchemaJSON returns the JSON Schema document of eventType's data.
func SchemaJSON(eventType string) ([]byte, error) {
	for _, s := range eventSchemas {
		if s.typ == eventType {
			return files.ReadFile(s.file)
		}
	}
	return nil, fmt.Errorf("schemas: no schema for event type %q", eventType)
}
