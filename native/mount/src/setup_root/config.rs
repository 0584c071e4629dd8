// SPDX-License-Identifier: MIT OR Apache-2.0
//! The settings of a composefs boot, and the one place they are read and checked.
//!
//! From the kernel command line: `composefs=<64 hex>` (or `composefs=sha256:<64 hex>`), the
//! image's fs-verity digest; `composefs.etc=overlay|transient`; `composefs.var=overlay|bind|transient`.
//! Under them, `ETC=` and `VAR=` lines of the initramfs's `/conf/composefs/boot.conf` (the hook's
//! copy of the OS tree's `/etc/composefs/boot.conf`). The command line wins, and of two equal
//! arguments the last; without `composefs=` (or with an empty one) nothing is a composefs boot and
//! neither boot.conf nor anything else is read. The layout these settings name is written by `python/composefs/boot.py`.
//!
//! boot.conf is read, never run: blank lines, `# comments`, and `NAME=VALUE` with an optional
//! `export `, the value bare or in single or double quotes, a `# comment` after it; any other line
//! is refused with its number. Names other than ETC and VAR are left alone.

/// Where the initramfs keeps the hook's copy of `/etc/composefs/boot.conf`.
pub const BOOT_CONF: &str = "/conf/composefs/boot.conf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcMode {
    /// The image's /etc under the deployment's persistent upper directory.
    Overlay,
    /// The image's /etc under an upper directory on a tmpfs.
    Transient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarMode {
    /// The image's /var under the deployment's persistent upper directory.
    Overlay,
    /// `state/var` of the root partition, shared by every deployment.
    Bind,
    /// The image's /var under an upper directory on a tmpfs.
    Transient,
}

impl EtcMode {
    pub fn name(self) -> &'static str {
        match self {
            EtcMode::Overlay => "overlay",
            EtcMode::Transient => "transient",
        }
    }
}

impl VarMode {
    pub fn name(self) -> &'static str {
        match self {
            VarMode::Overlay => "overlay",
            VarMode::Bind => "bind",
            VarMode::Transient => "transient",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The image's fs-verity sha256 digest, 64 lower-case hex digits.
    pub digest: String,
    pub etc: EtcMode,
    pub var: VarMode,
}

/// A setting refused, worded for the one `composefs: boot stopped:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// The kernel command line's `composefs.KEY=` settings read here. They look like parameters of
/// a module named composefs (which has none): the module loader knows to leave them alone.
pub const CMDLINE_KEYS: [&str; 2] = ["composefs.etc", "composefs.var"];

/// One setting as given, and how to show it in an error (`composefs.etc=X`, `ETC=X (BOOT_CONF line N)`).
struct Given {
    value: String,
    shown: String,
}

impl Given {
    fn new(value: &str, shown: String) -> Self {
        Given {
            value: value.into(),
            shown,
        }
    }
}

/// The settings from the command line `cmdline` over boot.conf (`conf` reads its text, None when
/// there is none; called only when the command line has `composefs=`); None when this is not a
/// composefs boot.
pub fn parse(
    cmdline: &str,
    conf: impl FnOnce() -> Result<Option<String>, ConfigError>,
) -> Result<Option<Config>, ConfigError> {
    // Split at white space as the kernel does for unquoted arguments (none of ours has quotes).
    let args: Vec<&str> = cmdline.split_ascii_whitespace().collect();
    let digest = args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("composefs="))
        .unwrap_or("");
    if digest.is_empty() {
        return Ok(None);
    }
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Err(ConfigError(format!(
            "composefs={digest} is not a sha256 digest (64 hex digits)"
        )));
    }
    let mut etc = Given::new("overlay", String::new());
    let mut var = Given::new("overlay", String::new());
    if let Some(text) = conf()? {
        for (name, value, line) in conf_assignments(&text)? {
            let given = Given::new(&value, format!("{name}={value} ({BOOT_CONF} line {line})"));
            match name.as_str() {
                "ETC" => etc = given,
                "VAR" => var = given,
                _ => {}
            }
        }
    }
    for arg in &args {
        if let Some(v) = arg.strip_prefix("composefs.etc=") {
            etc = Given::new(v, arg.to_string());
        } else if let Some(v) = arg.strip_prefix("composefs.var=") {
            var = Given::new(v, arg.to_string());
        }
    }
    let etc_mode = match etc.value.as_str() {
        "overlay" => EtcMode::Overlay,
        "transient" => EtcMode::Transient,
        _ => return Err(ConfigError(format!("{}: not overlay or transient", etc.shown))),
    };
    let var_mode = match var.value.as_str() {
        "overlay" => VarMode::Overlay,
        "bind" => VarMode::Bind,
        "transient" => VarMode::Transient,
        _ => return Err(ConfigError(format!("{}: not overlay, bind or transient", var.shown))),
    };
    Ok(Some(Config {
        digest: hex.to_string(),
        etc: etc_mode,
        var: var_mode,
    }))
}

/// The `NAME=VALUE` lines of boot.conf as (name, unquoted value, line number).
fn conf_assignments(text: &str) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let bad = || ConfigError(format!("{BOOT_CONF} line {n}: not NAME=VALUE: {}", raw.trim()));
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let (name, rest) = line.split_once('=').ok_or_else(bad)?;
        let name_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(bad());
        }
        let (value, after) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end = rest[1..].find(q).ok_or_else(bad)?;
                (&rest[1..1 + end], &rest[2 + end..])
            }
            _ => {
                let end = rest.find(|c: char| c.is_ascii_whitespace()).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        let after = after.trim_start();
        if !(after.is_empty() || after.starts_with('#')) {
            return Err(bad());
        }
        out.push((name.to_string(), value.to_string(), n));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(digest: &str, etc: EtcMode, var: VarMode) -> Result<Option<Config>, String> {
        Ok(Some(Config {
            digest: digest.into(),
            etc,
            var,
        }))
    }

    #[test]
    fn command_line_and_boot_conf() {
        use EtcMode as E;
        use VarMode as V;
        let d = D;
        type Case<'a> = (String, Option<&'a str>, Result<Option<Config>, String>);
        let cases: Vec<Case> = vec![
            // not a composefs boot: nothing else is looked at
            ("root=/dev/vda rw".into(), None, Ok(None)),
            (
                "root=/dev/vda composefs= composefs.etc=bogus".into(),
                Some("garbage"),
                Ok(None),
            ),
            ("composefs= composefs.etc=bogus".into(), Some("ETC=x"), Ok(None)),
            (format!("composefs={d} composefs="), None, Ok(None)),
            // the digest
            (
                format!("root=/dev/vda rw composefs={d} quiet"),
                None,
                ok(d, E::Overlay, V::Overlay),
            ),
            (format!("composefs=sha256:{d}"), None, ok(d, E::Overlay, V::Overlay)),
            (
                format!("composefs=0 composefs={d}"),
                None,
                ok(d, E::Overlay, V::Overlay),
            ),
            (
                format!("composefs={}", &d[1..]),
                None,
                Err(format!("composefs={} is not a sha256 digest (64 hex digits)", &d[1..])),
            ),
            (
                format!("composefs={d}0"),
                None,
                Err(format!("composefs={d}0 is not a sha256 digest (64 hex digits)")),
            ),
            (
                format!("composefs={}", d.to_uppercase()),
                None,
                Err(format!(
                    "composefs={} is not a sha256 digest (64 hex digits)",
                    d.to_uppercase()
                )),
            ),
            (
                format!("composefs=sha512:{d}"),
                None,
                Err(format!("composefs=sha512:{d} is not a sha256 digest (64 hex digits)")),
            ),
            (
                "composefs=sha256:".into(),
                None,
                Err("composefs=sha256: is not a sha256 digest (64 hex digits)".into()),
            ),
            // the modes on the command line
            (
                format!("composefs={d} composefs.etc=transient composefs.var=bind"),
                None,
                ok(d, E::Transient, V::Bind),
            ),
            (
                format!("composefs={d} composefs.var=transient"),
                None,
                ok(d, E::Overlay, V::Transient),
            ),
            (
                format!("composefs={d} composefs.var=bind composefs.var=overlay"),
                None,
                ok(d, E::Overlay, V::Overlay),
            ),
            (
                format!("composefs={d} composefs.etc=bind"),
                None,
                Err("composefs.etc=bind: not overlay or transient".into()),
            ),
            (
                format!("composefs={d} composefs.var="),
                None,
                Err("composefs.var=: not overlay, bind or transient".into()),
            ),
            (
                format!("composefs={d} composefs.var=Bind"),
                None,
                Err("composefs.var=Bind: not overlay, bind or transient".into()),
            ),
            // the digest is checked first
            (
                "composefs=xyz composefs.etc=bogus".into(),
                None,
                Err("composefs=xyz is not a sha256 digest (64 hex digits)".into()),
            ),
            // boot.conf, and the command line over it
            (
                format!("composefs={d}"),
                Some("ETC=transient\nVAR=bind\n"),
                ok(d, E::Transient, V::Bind),
            ),
            (
                format!("composefs={d} composefs.var=overlay"),
                Some("VAR=bind"),
                ok(d, E::Overlay, V::Overlay),
            ),
            (
                format!("composefs={d}"),
                Some("# defaults\n\n  export VAR=\"transient\"  # for tests\nETC='overlay'\nOTHER=1\n"),
                ok(d, E::Overlay, V::Transient),
            ),
            (
                format!("composefs={d}"),
                Some("VAR=bind\nVAR=transient"),
                ok(d, E::Overlay, V::Transient),
            ),
            (
                format!("composefs={d}"),
                Some("\nVAR=tmpfs"),
                Err(format!(
                    "VAR=tmpfs ({BOOT_CONF} line 2): not overlay, bind or transient"
                )),
            ),
            (
                format!("composefs={d}"),
                Some("ETC="),
                Err(format!("ETC= ({BOOT_CONF} line 1): not overlay or transient")),
            ),
            (
                format!("composefs={d}"),
                Some("VAR=bind extra"),
                Err(format!("{BOOT_CONF} line 1: not NAME=VALUE: VAR=bind extra")),
            ),
            (
                format!("composefs={d}"),
                Some("VAR=\"bind"),
                Err(format!("{BOOT_CONF} line 1: not NAME=VALUE: VAR=\"bind")),
            ),
            (
                format!("composefs={d}"),
                Some("1VAR=bind"),
                Err(format!("{BOOT_CONF} line 1: not NAME=VALUE: 1VAR=bind")),
            ),
            (
                format!("composefs={d}"),
                Some("VAR bind"),
                Err(format!("{BOOT_CONF} line 1: not NAME=VALUE: VAR bind")),
            ),
            (
                format!("composefs={d}"),
                Some(". /etc/other.conf"),
                Err(format!("{BOOT_CONF} line 1: not NAME=VALUE: . /etc/other.conf")),
            ),
        ];
        for (cmdline, conf, want) in cases {
            let got = parse(&cmdline, || Ok(conf.map(String::from))).map_err(|e| e.0);
            assert_eq!(got, want, "cmdline {cmdline:?}, boot.conf {conf:?}");
        }
    }
}
