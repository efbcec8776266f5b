// Package pgutil is what the PostgreSQL stores (tracestore/postgres,
// ratelimit/postgres) share: the names their tables may have, and creating
// the tables once, however many processes start at the same moment.
package pgutil

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
)

// identifier is an unquoted PostgreSQL name, optionally schema-qualified,
// that folds to itself.
var identifier = regexp.MustCompile(`^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$`)

// maxIdentifier is PostgreSQL's NAMEDATALEN-1: longer names are cut, which
// could make two names collide.
const maxIdentifier = 63

// CheckName reports whether name (of the config field field) can name
// tables: a lowercase name (letters, digits, _), optionally
// schema-qualified, whose unqualified part stays within PostgreSQL's 63
// bytes with the longest suffix the store adds to it.
func CheckName(field, name string, longestSuffix int) error {
	base := name[strings.LastIndexByte(name, '.')+1:]
	switch {
	case !identifier.MatchString(name):
		return fmt.Errorf("%s %q is not a lowercase name (letters, digits, _), optionally schema-qualified", field, name)
	case len(base)+longestSuffix > maxIdentifier:
		return fmt.Errorf("%s %q is longer than %d characters", field, name, maxIdentifier-longestSuffix)
	}
	return nil
}

// Quote quotes each part of a name CheckName accepted, so that a reserved
// word (a table called "user") works too.
func Quote(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + p + `"`
	}
	return strings.Join(parts, ".")
}

// LockKey turns name into an advisory lock key.
func LockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// CreateOnce runs ddl in one transaction under the advisory lock lock,
// unless the query exists (with args) reports that everything is there
// already: a role without CREATE rights then works on tables a DBA made.
// The lock matters because concurrent CREATE TABLE IF NOT EXISTS of one
// table can fail on pg_type's unique index.
func CreateOnce(ctx context.Context, db *sql.DB, lock int64, exists string, args []any, ddl []string) error {
	var ok bool
	if err := db.QueryRowContext(ctx, exists, args...).Scan(&ok); err != nil {
		return err
	}
	if ok {
		return nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lock); err != nil {
		return err
	}
	for _, stmt := range ddl {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return tx.Commit()
}
