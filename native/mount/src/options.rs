// SPDX-License-Identifier: MIT OR Apache-2.0
//! The `-o` option string of `mount.composefs`, as mount(8) and fstab hand it over.
//!
//! Spellings and meanings follow the reference helper (composefs 1.0.x `mount.composefs`):
//! items are separated by commas, a backslash makes the next byte literal (so `\,` is a comma
//! inside a value, `\\` a backslash), the first unescaped `=` separates key and value, and the
//! value is unescaped. `basedir=` is a colon list; unlike the reference, an escaped `\:` keeps a
//! colon inside one directory name (the reference unescapes first and splits afterwards, so it
//! cannot name such a directory). Ours on top: `verity_check=0|1|2`, `backend=`, and the usual
//! mount attributes (`nosuid`, `nodev`, ...).
//!
//! Sloppy mode (`-s`) skips unknown keys only. A key it knows is always honoured or refused, and
//! an unknown key that names verification (`*verity*`, `*digest*`, `*idmap*`, `*sign*`) is
//! refused even then: dropping it would mount without a check the user asked for.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::{Backend, Error, Request};

/// Mount attributes by their mount(8) names: `MOUNT_ATTR_*` for fsmount, `MS_*` for mount(2).
pub const ATTRS: &[(&str, u32, u64)] = &[
    ("ro", 0x01, libc::MS_RDONLY),
    ("nosuid", 0x02, libc::MS_NOSUID),
    ("nodev", 0x04, libc::MS_NODEV),
    ("noexec", 0x08, libc::MS_NOEXEC),
    ("noatime", 0x10, libc::MS_NOATIME),
    ("strictatime", 0x20, libc::MS_STRICTATIME),
    ("nodiratime", 0x80, libc::MS_NODIRATIME),
];

/// Options mount(8) or fstab may pass that mean nothing to the kernel (userspace-only, or the
/// defaults); accepted and ignored as mount(8) itself does.
const IGNORED: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev", "suid", "dev",
    "exec", "relatime", "atime", "diratime", "async", "loud", "silent",
];

const SECURITY_WORDS: &[&str] = &["verity", "digest", "idmap", "sign"];

/// One `key[=value]` item, still escaped.
struct Item<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// Split at unescaped commas; key and value at the first unescaped `=`.
fn items(s: &[u8]) -> Vec<Item<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut eq: Option<usize> = None;
    let mut i = 0;
    while i <= s.len() {
        if i == s.len() || s[i] == b',' {
            let (key, value) = match eq {
                Some(e) => (&s[start..e], Some(&s[e + 1..i])),
                None => (&s[start..i], None),
            };
            if !key.is_empty() || value.is_some() {
                out.push(Item { key, value });
            }
            start = i + 1;
            eq = None;
        } else if s[i] == b'\\' && i + 1 < s.len() {
            i += 1;
        } else if s[i] == b'=' && eq.is_none() {
            eq = Some(i);
        }
        i += 1;
    }
    out
}

/// Remove the escaping backslashes: `\x` is `x` for every byte x (a lone trailing `\` stays).
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() {
            i += 1;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Split an escaped value at unescaped colons, unescaping each piece.
fn split_colons(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if i + 1 < s.len() => {
                cur.push(s[i + 1]);
                i += 1;
            }
            b':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        i += 1;
    }
    out.push(cur);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path(b: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(b))
}

fn needs_value<'a>(key: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], Error> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::usage(format!("no value given for the {key}= option"))),
    }
}

fn no_value(key: &str, value: Option<&[u8]>) -> Result<(), Error> {
    match value {
        None => Ok(()),
        Some(_) => Err(Error::usage(format!("the {key} option takes no value"))),
    }
}

/// Apply option strings (each as given to one `-o`) to `req`, in order; later items win.
pub fn apply(req: &mut Request, option_strings: &[OsString], sloppy: bool) -> Result<(), Error> {
    for s in option_strings {
        for it in items(s.as_bytes()) {
            apply_item(req, &it, sloppy)?;
        }
    }
    Ok(())
}

fn apply_item(req: &mut Request, it: &Item<'_>, sloppy: bool) -> Result<(), Error> {
    let key = text(it.key);
    match key.as_str() {
        "basedir" => {
            let v = needs_value(&key, it.value)?;
            let dirs = split_colons(v);
            if dirs.iter().any(|d| d.is_empty()) {
                return Err(Error::usage(format!(
                    "basedir={}: an empty directory name in the list",
                    text(v)
                )));
            }
            req.basedirs = dirs.into_iter().map(path).collect();
        }
        "digest" => req.digest = Some(parse_digest(&text(&unescape(needs_value(&key, it.value)?)))?),
        "verity" => {
            no_value(&key, it.value)?;
            req.require_verity = true;
        }
        "tryverity" => {
            no_value(&key, it.value)?;
            req.try_verity = true;
        }
        "verity_check" => {
            let v = text(needs_value(&key, it.value)?);
            req.verity_check = Some(match v.as_str() {
                "0" => 0,
                "1" => 1,
                "2" => 2,
                _ => return Err(Error::usage(format!("bad verity_check={v}: expected 0, 1 or 2"))),
            });
        }
        "idmap" => req.idmap = Some(path(unescape(needs_value(&key, it.value)?))),
        "upperdir" => req.upperdir = Some(path(unescape(needs_value(&key, it.value)?))),
        "workdir" => req.workdir = Some(path(unescape(needs_value(&key, it.value)?))),
        "backend" => {
            let v = text(needs_value(&key, it.value)?);
            req.backend = Backend::parse(&v)?;
        }
        "rw" => {
            no_value(&key, it.value)?;
            req.attrs.retain(|a| a != "ro");
            req.readonly = Some(false);
        }
        "ro" => {
            no_value(&key, it.value)?;
            req.readonly = Some(true);
        }
        k if ATTRS.iter().any(|(n, _, _)| *n == k) => {
            no_value(&key, it.value)?;
            if !req.attrs.iter().any(|a| a == k) {
                req.attrs.push(k.to_string());
            }
        }
        k if (IGNORED.contains(&k) && it.value.is_none()) || k.starts_with("x-") || k == "comment" => {}
        k => {
            let lower = k.to_ascii_lowercase();
            if sloppy && !SECURITY_WORDS.iter().any(|w| lower.contains(w)) {
                return Ok(());
            }
            let why = if sloppy {
                "refused even with -s: it looks like a verification option this helper does not know"
            } else {
                "use -s to ignore unknown options"
            };
            return Err(Error::usage(format!(
                "unknown option {:?} ({why})",
                OsStr::from_bytes(it.key)
            )));
        }
    }
    Ok(())
}

/// A hex sha256 fs-verity digest, lower-cased.
pub fn parse_digest(text: &str) -> Result<String, Error> {
    let t = text.trim().to_ascii_lowercase();
    if t.len() != 64 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::usage(format!(
            "bad digest {text:?}: expected 64 hex digits (an fs-verity sha256 digest)"
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[&str], sloppy: bool) -> Result<Request, Error> {
        let mut r = Request::new("img".into(), "/m".into());
        let v: Vec<OsString> = opts.iter().map(OsString::from).collect();
        apply(&mut r, &v, sloppy)?;
        Ok(r)
    }

    fn dirs(r: &Request) -> Vec<String> {
        r.basedirs.iter().map(|p| p.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn escapes_and_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("basedir=/a:/b", &["/a", "/b"]),
            (r"basedir=/a\,b:/c", &["/a,b", "/c"]),
            (r"basedir=/a\:b:/c", &["/a:b", "/c"]),
            (r"basedir=/a\\:/c", &["/a\\", "/c"]),
            (r"basedir=/x=y", &["/x=y"]),
            (r"ro,basedir=/o\,1,rw", &["/o,1"]),
        ];
        for (opt, want) in cases {
            assert_eq!(dirs(&parse(&[opt], false).unwrap()), *want, "{opt}");
        }
    }

    #[test]
    fn reference_spellings() {
        let hex = "AB".repeat(32);
        let r = parse(
            &[&format!("basedir=/a,digest={hex},verity,idmap=/proc/1/ns/user,ro")],
            false,
        )
        .unwrap();
        assert_eq!(r.digest.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(r.require_verity && !r.try_verity);
        assert_eq!(r.idmap.as_deref(), Some(std::path::Path::new("/proc/1/ns/user")));
        assert_eq!(r.readonly, Some(true));
        let r = parse(&["basedir=/a,tryverity,upperdir=/u\\,1,workdir=/w,rw"], false).unwrap();
        assert!(r.try_verity && !r.require_verity);
        assert_eq!(r.upperdir.as_deref(), Some(std::path::Path::new("/u,1")));
        assert_eq!(r.readonly, Some(false));
        let r = parse(
            &["basedir=/a,verity_check=1,backend=overlay,nosuid,nodev,x-systemd.automount,_netdev"],
            false,
        )
        .unwrap();
        assert_eq!((r.verity_check, r.backend), (Some(1), Backend::Overlay));
        assert_eq!(r.attrs, ["nosuid", "nodev"]);
    }

    #[test]
    fn sloppy_never_drops_verification() {
        assert!(parse(&["basedir=/a,unknown=1"], false).is_err());
        assert!(parse(&["basedir=/a,unknown=1"], true).is_ok());
        for bad in ["noverity", "digest_alg=x", "idmapped", "signature=/k", "VERITY=require"] {
            let e = parse(&[&format!("basedir=/a,{bad}")], true).unwrap_err();
            assert!(e.to_string().contains("refused even with -s"), "{bad}: {e}");
        }
        // Known options with bad values are errors whatever -s says.
        for bad in [
            "verity_check=5",
            "digest=12",
            "verity=yes",
            "basedir=",
            "basedir=/a::/b",
            "backend=nfs",
        ] {
            assert!(parse(&[bad], true).is_err(), "{bad}");
        }
    }

    #[test]
    fn unescape_keeps_a_lone_trailing_backslash() {
        assert_eq!(unescape(br"a\\b\,c\"), br"a\b,c\".to_vec());
    }
}
