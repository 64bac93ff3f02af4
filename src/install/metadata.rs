//! The small text formats inside a wheel's `.dist-info`: `WHEEL` and `METADATA` (email
//! headers), `entry_points.txt` (INI), and the launchers galley writes for entry points.

use std::collections::BTreeMap;

/// Parses email-style headers (`Key: value`, indented continuation lines) up to the
/// first blank line. Keys containing spaces are skipped, as mail parsers do.
pub(crate) fn parse_headers(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = last.as_ref().and_then(|k| out.get_mut(k)).and_then(|v| v.last_mut()) {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(line.trim());
            }
            continue;
        }
        last = None;
        let Some((key, value)) = line.split_once(':') else { continue };
        if key.contains(' ') {
            continue;
        }
        out.entry(key.to_owned()).or_default().push(value.trim().to_owned());
        last = Some(key.to_owned());
    }
    out
}

/// One `console_scripts` / `gui_scripts` entry: `name = module:function [extras]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Script {
    pub name: String,
    pub module: String,
    pub function: String,
}

impl Script {
    fn parse(name: &str, value: &str) -> Result<Self, String> {
        let invalid = || format!("entry point `{name} = {value}` is not `module:function`");
        // Extras in brackets are accepted and ignored, as the entry points spec says.
        let value = value.split_once('[').map_or(value, |(v, _)| v);
        let (module, function) = value.split_once(':').ok_or_else(invalid)?;
        let (module, function) = (module.trim(), function.trim());
        let dotted = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !dotted(module) || !dotted(function) {
            return Err(invalid());
        }
        Ok(Self { name: name.to_owned(), module: module.to_owned(), function: function.to_owned() })
    }

    /// The launcher uv and pip write (distlib's template without `import re`).
    pub fn launcher(&self, shebang: &str) -> String {
        let import_name = self.function.split_once('.').map_or(self.function.as_str(), |(first, _)| first);
        format!(
            "{shebang}\n# -*- coding: utf-8 -*-\nimport sys\nfrom {module} import {import_name}\nif __name__ == \"__main__\":\n    if sys.argv[0].endswith(\"-script.pyw\"):\n        sys.argv[0] = sys.argv[0][:-11]\n    elif sys.argv[0].endswith(\".exe\"):\n        sys.argv[0] = sys.argv[0][:-4]\n    sys.exit({function}())\n",
            module = self.module,
            function = self.function,
        )
    }
}

/// Console and GUI scripts from `entry_points.txt`, sorted by name.
#[derive(Debug, Default)]
pub(crate) struct EntryPoints {
    pub console: Vec<Script>,
    pub gui: Vec<Script>,
}

impl EntryPoints {
    /// Parses the INI file (case-sensitive keys, `=` as the only delimiter, `#`/`;`
    /// comments, indented continuation lines), keeping only the script sections.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section: Option<String> = None;
        let mut last_key: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if raw.starts_with([' ', '\t'])
                && let (Some(s), Some(k)) = (&section, &last_key)
                && let Some(v) = sections.get_mut(s).and_then(|m| m.get_mut(k))
            {
                v.push(' ');
                v.push_str(line);
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim().to_owned());
                sections.entry(name.trim().to_owned()).or_default();
                last_key = None;
                continue;
            }
            let Some(current) = &section else {
                return Err(format!("line {}: `{line}` comes before any [section]", n + 1));
            };
            let (key, value) = line.split_once('=').ok_or_else(|| format!("line {}: `{line}` has no `=`", n + 1))?;
            let key = key.trim().to_owned();
            sections.entry(current.clone()).or_default().insert(key.clone(), value.trim().to_owned());
            last_key = Some(key);
        }
        let scripts = |name: &str| -> Result<Vec<Script>, String> {
            sections.get(name).map_or(Ok(Vec::new()), |m| m.iter().map(|(k, v)| Script::parse(k, v)).collect())
        };
        Ok(Self { console: scripts("console_scripts")?, gui: scripts("gui_scripts")? })
    }
}

/// The first line of a script run by `python`: a plain `#!` line, or the `/bin/sh`
/// trampoline pip and uv use when the path has spaces or exceeds the kernel's 127 bytes.
pub(crate) fn shebang(python: &str) -> String {
    if 2 + python.len() + 1 > 127 || python.contains(' ') {
        format!("#!/bin/sh\n'''exec' '{}' \"$0\" \"$@\"\n' '''", python.replace('\'', r"'\''"))
    } else {
        format!("#!{python}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_repeats_and_continuations() {
        let h = parse_headers("Wheel-Version: 1.0\nTag: a\nTag:\n  b\nBad Key: x\nRoot-Is-Purelib: true\n\nbody: no\n");
        assert_eq!(h["Tag"], ["a", "b"]);
        assert_eq!(h["Root-Is-Purelib"], ["true"]);
        assert!(!h.contains_key("Bad Key") && !h.contains_key("body"));
    }

    #[test]
    fn entry_points_and_launchers() {
        let ep = EntryPoints::parse(
            "[console_scripts]\nf2py = numpy.f2py.f2py2e:main\nattr = pkg.mod:obj.method [extra]\n; comment\n[gui_scripts]\ng=pkg:gui\n[other]\nx = y\n",
        )
        .unwrap();
        assert_eq!(ep.console.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["attr", "f2py"]);
        assert_eq!(ep.gui[0].function, "gui");
        let launcher = ep.console[0].launcher("#!/env/bin/python");
        assert!(launcher.starts_with("#!/env/bin/python\n# -*- coding: utf-8 -*-\nimport sys\nfrom pkg.mod import obj\n"));
        assert!(launcher.ends_with("    sys.exit(obj.method())\n"));
        assert!(EntryPoints::parse("[console_scripts]\nx = nocolon\n").is_err());
        assert!(EntryPoints::parse("[console_scripts]\nx: a:b\n").is_err());
        assert!(EntryPoints::parse("x = a:b\n").is_err());
    }

    #[test]
    fn long_or_spaced_interpreters_use_the_sh_trampoline() {
        assert_eq!(shebang("/opt/galley/envs/core/bin/python"), "#!/opt/galley/envs/core/bin/python");
        let spaced = shebang("/opt/my env/bin/python");
        assert_eq!(spaced, "#!/bin/sh\n'''exec' '/opt/my env/bin/python' \"$0\" \"$@\"\n' '''");
        let long = format!("/{}/bin/python", "x".repeat(130));
        assert!(shebang(&long).starts_with("#!/bin/sh\n"));
    }
}
