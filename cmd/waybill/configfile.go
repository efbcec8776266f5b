package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/waybillkit/waybill/ratelimit"
)

// String shows the merchant without its secret or refresh token.
func (m merchant) String() string {
	return fmt.Sprintf("merchant{appid:%s token:%s limits:%+v}", m.AppID, m.Token, m.Limits)
}

// GoString is String: %#v must not print secrets either.
func (m merchant) GoString() string { return m.String() }

// How a merchant's access token is obtained: the merchants key token and
// the -token-api flag.
const (
	// tokenStable is cgi-bin/stable_token with the app secret: safe for
	// independent processes, the default.
	tokenStable = "stable_token"
	// tokenPlain is cgi-bin/token with the app secret: every call voids the
	// previous token, so it is shared through the token store (-redis) with
	// one refresher at a time — for a merchant whose other systems share
	// that token through the same store.
	tokenPlain = "token"
	// tokenAuthorizer is the authorizer_access_token the third-party
	// platform (-component-appid) obtains for a merchant that authorized it.
	tokenAuthorizer = "authorizer"
)

// merchant is one entry of the config file's merchants: an appid, how its
// access token is obtained, where its secret or refresh token is (by
// reference: a file or an environment variable, never the value itself)
// and its own limits.
type merchant struct {
	AppID string
	// Token is tokenStable, tokenPlain or tokenAuthorizer; "" means
	// -token-api.
	Token  string
	Secret string // the app secret, resolved from secret_file or secret_env
	// RefreshToken is the authorizer_refresh_token to start from, resolved
	// from refresh_token_file or refresh_token_env; used only while the
	// token store holds none (it rotates on every fetch).
	RefreshToken string
	Limits       ratelimit.Limits
	line         int
}

// applyConfigFile sets, from the YAML file at path, every flag of fs not
// already set (on the command line or by the environment), and returns the
// file's merchants. Top-level keys are the flags' names; a list value is
// joined with commas. Unknown keys, in the file or in a merchant, are
// errors that name the line.
func applyConfigFile(fs *flag.FlagSet, path string, getenv func(string) string) ([]merchant, error) {
	return loadConfigFile(fs, path, getenv, false)
}

// applyConfigFileOnly is applyConfigFile for a command that takes some of
// the service's flags: the file's other keys (and its merchants) are the
// service's, not errors, and are left alone.
func applyConfigFileOnly(fs *flag.FlagSet, path string, getenv func(string) string) ([]merchant, error) {
	return loadConfigFile(fs, path, getenv, true)
}

func loadConfigFile(fs *flag.FlagSet, path string, getenv func(string) string, subset bool) ([]merchant, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-config: %w", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(root.Content) == 0 {
		return nil, nil // an empty file
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s line %d: want a mapping of flag names to values", path, doc.Line)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	var merchants []merchant
	at := func(n *yaml.Node, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config %s line %d: %s", path, n.Line, fmt.Sprintf(format, args...)))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if seen[k.Value] {
			at(k, "key %q given twice", k.Value)
			continue
		}
		seen[k.Value] = true
		switch {
		case k.Value == "merchants" && subset:
			continue
		case k.Value == "merchants":
			merchants = parseMerchants(v, getenv, at)
			continue
		case subset && fs.Lookup(k.Value) == nil:
			continue // a service flag this command does not take
		case k.Value == "config":
			at(k, "a config file cannot name another")
			continue
		case fs.Lookup(k.Value) == nil:
			at(k, "unknown key %q (the keys are the flags' names, and merchants)", k.Value)
			continue
		}
		value, ok := scalarOrList(v)
		if !ok {
			at(v, "%s: want a value or a list of values", k.Value)
			continue
		}
		if set[k.Value] {
			continue // the command line and the environment come first
		}
		if err := fs.Set(k.Value, value); err != nil {
			at(v, "%s: %v", k.Value, err)
		}
	}
	return merchants, errors.Join(errs...)
}

// scalarOrList is a node's value as a flag takes it.
func scalarOrList(n *yaml.Node) (string, bool) {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Value, true
	case yaml.SequenceNode:
		items := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return "", false
			}
			items = append(items, c.Value)
		}
		return strings.Join(items, ","), true
	}
	return "", false
}

// parseMerchants reads the merchants list, resolving each reference.
func parseMerchants(n *yaml.Node, getenv func(string) string, at func(*yaml.Node, string, ...any)) []merchant {
	if n.Kind != yaml.SequenceNode {
		at(n, "merchants: want a list")
		return nil
	}
	var out []merchant
	appids := map[string]bool{}
	for _, m := range n.Content {
		if m.Kind != yaml.MappingNode {
			at(m, "merchant: want a mapping with appid and secret_file or secret_env")
			continue
		}
		mc := merchant{line: m.Line}
		refs := map[string]string{} // secret_file, secret_env, refresh_token_file, refresh_token_env
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			switch k.Value {
			case "appid":
				mc.AppID = v.Value
			case "token":
				switch v.Value {
				case tokenStable, tokenPlain, tokenAuthorizer:
					mc.Token = v.Value
				default:
					at(v, "token %q: want %s, %s or %s", v.Value, tokenStable, tokenPlain, tokenAuthorizer)
				}
			case "secret_file", "secret_env", "refresh_token_file", "refresh_token_env":
				refs[k.Value] = v.Value
			case "limits":
				if v.Kind != yaml.MappingNode {
					at(v, "limits: want a mapping of app_daily, user_daily, rate, burst")
					continue
				}
				for j := 0; j+1 < len(v.Content); j += 2 {
					if err := setLimit(&mc.Limits, v.Content[j].Value, v.Content[j+1].Value); err != nil {
						at(v.Content[j], "limits: %v", err)
					}
				}
			default:
				at(k, "unknown merchant key %q (want appid, token, secret_file, secret_env, refresh_token_file, refresh_token_env, limits)", k.Value)
			}
		}
		switch {
		case mc.AppID == "":
			at(m, "merchant without appid")
			continue
		case appids[mc.AppID]:
			at(m, "merchant %s given twice", mc.AppID)
			continue
		}
		appids[mc.AppID] = true
		var err error
		if mc.Token == tokenAuthorizer {
			switch {
			case refs["secret_file"] != "" || refs["secret_env"] != "":
				err = errors.New("an authorizer has no app secret here: the platform's authorization stands for it")
			case refs["refresh_token_file"] != "" && refs["refresh_token_env"] != "":
				err = errors.New("give at most one of refresh_token_file and refresh_token_env")
			case refs["refresh_token_file"] != "" || refs["refresh_token_env"] != "":
				mc.RefreshToken, err = resolveRef(refs["refresh_token_file"], refs["refresh_token_env"], getenv)
			}
		} else {
			switch {
			case refs["refresh_token_file"] != "" || refs["refresh_token_env"] != "":
				err = errors.New("a refresh token is for token: authorizer only")
			case (refs["secret_file"] == "") == (refs["secret_env"] == ""):
				err = errors.New("give exactly one of secret_file and secret_env (the secret itself never goes in this file)")
			default:
				mc.Secret, err = resolveRef(refs["secret_file"], refs["secret_env"], getenv)
			}
		}
		if err != nil {
			at(m, "merchant %s: %v", mc.AppID, err)
			continue
		}
		out = append(out, mc)
	}
	return out
}

// resolveRef reads a value given by reference: the trimmed content of file,
// or the environment variable env. An empty value is an error naming the
// reference, never the value.
func resolveRef(file, env string, getenv func(string) string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		if v := strings.TrimSpace(string(b)); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("%s is empty", file)
	}
	if v := getenv(env); v != "" {
		return v, nil
	}
	return "", fmt.Errorf("the variable %s is empty", env)
}
