//! Wheel compatibility: wheel file names (PEP 427 / 491), the target an env is locked
//! for (Python version + platform), the tags that target accepts in the order pip and
//! uv prefer them (`packaging.tags.sys_tags` for CPython), and marker evaluation.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use pep508_rs::{MarkerEnvironment, MarkerEnvironmentBuilder};

use crate::base::Libc;
use crate::install::WheelFilename;
use crate::manifest::PythonVersion;
use crate::oci::Platform;

/// The tag part of a wheel's name (`cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64`).
pub fn tag_string(wheel: &WheelFilename) -> String {
    format!("{}-{}-{}", wheel.python_tags().join("."), wheel.abi_tags().join("."), wheel.platform_tags().join("."))
}

/// A build tag's number (`2b` → 2): the higher one wins between otherwise equal wheels.
fn build_number(wheel: &WheelFilename) -> u64 {
    wheel.build().map_or(0, |b| b.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0))
}

/// `manylinux2014_x86_64` → `manylinux_2_17_x86_64` (PEP 600's aliases).
fn normalize_legacy_platform(tag: &str) -> String {
    for (legacy, glibc) in [("manylinux2014_", "2_17"), ("manylinux2010_", "2_12"), ("manylinux1_", "2_5")] {
        if let Some(arch) = tag.strip_prefix(legacy) {
            return format!("manylinux_{glibc}_{arch}");
        }
    }
    tag.to_owned()
}

/// The platform an env is locked for, in uv's `--python-platform` spelling:
/// `x86_64-manylinux_2_36`, `aarch64-musllinux_1_2`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetPlatform {
    arch: String,
    libc: Libc,
}

impl TargetPlatform {
    pub fn new(arch: &str, libc: Libc) -> Result<Self, String> {
        let valid = !arch.is_empty() && arch.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!("`{arch}` is not a CPU architecture such as x86_64 or aarch64"));
        }
        Ok(Self { arch: arch.to_owned(), libc })
    }

    /// The platform of an image: its architecture in wheel terms and its C library.
    pub fn for_image(platform: &Platform, libc: Libc) -> Result<Self, String> {
        let arch = match (platform.architecture.as_str(), platform.variant.as_deref()) {
            ("amd64", _) => "x86_64",
            ("arm64", _) => "aarch64",
            ("arm", Some("v7") | None) => "armv7l",
            ("arm", Some(_)) => "armv6l",
            ("386", _) => "i686",
            (other, _) => other,
        };
        Self::new(arch, libc)
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn libc(&self) -> Libc {
        self.libc
    }

    /// Whether wheels locked for `self` run on an image with `other`'s platform: same
    /// architecture and C library family, and `other`'s library is at least as new.
    pub fn runs_on(&self, other: &Self) -> bool {
        self.arch == other.arch
            && match (self.libc, other.libc) {
                (Libc::Glibc { major, minor }, Libc::Glibc { major: m2, minor: n2 })
                | (Libc::Musl { major, minor }, Libc::Musl { major: m2, minor: n2 }) => (major, minor) <= (m2, n2),
                _ => false,
            }
    }

    /// Platform tags, best first: `manylinux_2_36_x86_64` down to the oldest manylinux,
    /// then `linux_x86_64` (as `packaging` orders them).
    fn platform_tags(&self) -> Vec<String> {
        let arch = &self.arch;
        let mut tags: Vec<String> = match self.libc {
            Libc::Glibc { major, minor } => {
                // manylinux starts at glibc 2.5 on x86, 2.17 elsewhere (PEP 599 / 600).
                let oldest = if matches!(arch.as_str(), "x86_64" | "i686") { 5 } else { 17 };
                (oldest..=minor).rev().map(|m| format!("manylinux_{major}_{m}_{arch}")).collect()
            }
            Libc::Musl { major, minor } => (0..=minor).rev().map(|m| format!("musllinux_{major}_{m}_{arch}")).collect(),
        };
        tags.push(format!("linux_{arch}"));
        tags
    }
}

impl fmt::Display for TargetPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.libc {
            Libc::Glibc { major, minor } => write!(f, "{}-manylinux_{major}_{minor}", self.arch),
            Libc::Musl { major, minor } => write!(f, "{}-musllinux_{major}_{minor}", self.arch),
        }
    }
}

impl FromStr for TargetPlatform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a platform like x86_64-manylinux_2_36, aarch64-manylinux_2_28 or x86_64-musllinux_1_2");
        let (arch, rest) = s.split_once('-').ok_or_else(bad)?;
        let libc = if rest == "manylinux2014" {
            Libc::Glibc { major: 2, minor: 17 }
        } else {
            let (family, version) =
                rest.strip_prefix("manylinux_").map(|v| ("glibc", v)).or_else(|| rest.strip_prefix("musllinux_").map(|v| ("musl", v))).ok_or_else(bad)?;
            let (major, minor) = version.split_once('_').ok_or_else(bad)?;
            format!("{family} {major}.{minor}").parse().map_err(|_| bad())?
        };
        Self::new(arch, libc).map_err(|_| bad())
    }
}

crate::serde_via_str!(TargetPlatform);

/// What an env is locked for: a CPython version on a platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub python: PythonVersion,
    pub platform: TargetPlatform,
}

/// The tags a target accepts, each with its rank (lower is better).
pub struct TagRanks {
    ranks: HashMap<(String, String, String), usize>,
}

impl TagRanks {
    /// The best rank among a wheel's tags, or None when it does not fit.
    pub fn rank(&self, wheel: &WheelFilename) -> Option<usize> {
        let (pythons, abis, platforms) = (wheel.python_tags(), wheel.abi_tags(), wheel.platform_tags());
        pythons
            .iter()
            .flat_map(|py| abis.iter().flat_map(move |abi| platforms.iter().map(move |plat| (py, abi, plat))))
            .filter_map(|(py, abi, plat)| self.ranks.get(&(py.clone(), abi.clone(), normalize_legacy_platform(plat))).copied())
            .min()
    }
}

impl Target {
    /// CPython's tags in `packaging.tags.sys_tags` order: `cp3X-cp3X-plat`, `cp3X-abi3-plat`,
    /// `cp3X-none-plat`, older `cp3Y-abi3-plat`, then `py3X`/`py3`/older `py3Y` with `none`
    /// on each platform, then `cp3X-none-any` and the `py*-none-any` tags.
    pub fn tag_ranks(&self) -> TagRanks {
        let (major, minor) = self.python.minor_version();
        let platforms = self.platform.platform_tags();
        let cp = format!("cp{major}{minor}");
        let mut ordered: Vec<(String, String, String)> = Vec::new();
        let on_each = |py: &str, abi: &str, ordered: &mut Vec<_>| {
            for plat in &platforms {
                ordered.push((py.to_owned(), abi.to_owned(), plat.clone()));
            }
        };
        on_each(&cp, &cp, &mut ordered);
        on_each(&cp, "abi3", &mut ordered);
        on_each(&cp, "none", &mut ordered);
        for older in (2..minor).rev() {
            on_each(&format!("cp{major}{older}"), "abi3", &mut ordered);
        }
        let py_versions: Vec<String> = std::iter::once(format!("py{major}{minor}"))
            .chain(std::iter::once(format!("py{major}")))
            .chain((0..minor).rev().map(|m| format!("py{major}{m}")))
            .collect();
        for py in &py_versions {
            on_each(py, "none", &mut ordered);
        }
        ordered.push((cp.clone(), "none".into(), "any".into()));
        for py in &py_versions {
            ordered.push((py.clone(), "none".into(), "any".into()));
        }
        let mut ranks = HashMap::new();
        for (rank, tag) in ordered.into_iter().enumerate() {
            ranks.entry(tag).or_insert(rank);
        }
        TagRanks { ranks }
    }

    /// A short description of the tags this target accepts, for error messages.
    pub fn describe_tags(&self) -> String {
        let (major, minor) = self.python.minor_version();
        let platforms = self.platform.platform_tags();
        let newest = platforms.first().cloned().unwrap_or_default();
        let oldest = platforms.iter().rev().nth(1).cloned().unwrap_or_default();
        format!(
            "cp{major}{minor} (abi cp{major}{minor}, abi3 or none) or py{major}, on {newest} down to {oldest}, linux_{}, or any",
            self.platform.arch
        )
    }

    /// The marker environment of this target, for PEP 508 markers in lock files.
    pub fn marker_environment(&self) -> Result<MarkerEnvironment, String> {
        let PythonVersion { major, minor, patch } = self.python;
        let full = format!("{major}.{minor}.{}", patch.unwrap_or(0));
        let short = format!("{major}.{minor}");
        MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
            implementation_name: "cpython",
            implementation_version: &full,
            os_name: "posix",
            platform_machine: &self.platform.arch,
            platform_python_implementation: "CPython",
            platform_release: "",
            platform_system: "Linux",
            platform_version: "",
            python_full_version: &full,
            python_version: &short,
            sys_platform: "linux",
        })
        .map_err(|e| e.to_string())
    }
}

/// Orders candidate wheels the way pip and uv choose: best tag rank, then the higher
/// build number, then the file name (so the choice is stable).
pub fn best_wheel<'a, T>(ranks: &TagRanks, wheels: &'a [T], filename: impl Fn(&T) -> &WheelFilename) -> Option<&'a T> {
    wheels
        .iter()
        .filter_map(|w| ranks.rank(filename(w)).map(|rank| (rank, w)))
        .min_by(|(ra, a), (rb, b)| {
            let (fa, fb) = (filename(a), filename(b));
            ra.cmp(rb).then_with(|| build_number(fb).cmp(&build_number(fa))).then_with(|| fa.to_string().cmp(&fb.to_string()))
        })
        .map(|(_, w)| w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(python: &str, platform: &str) -> Target {
        Target { python: python.parse().unwrap(), platform: platform.parse().unwrap() }
    }

    fn wheel(name: &str) -> WheelFilename {
        name.parse().unwrap()
    }

    #[test]
    fn tag_strings_keep_the_written_tags() {
        let w = wheel("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl");
        assert_eq!(tag_string(&w), "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64");
        assert_eq!(build_number(&wheel("x-1.0-12b-py3-none-any.whl")), 12);
    }

    #[test]
    fn target_platforms_round_trip() {
        for s in ["x86_64-manylinux_2_36", "aarch64-manylinux_2_28", "x86_64-musllinux_1_2"] {
            assert_eq!(s.parse::<TargetPlatform>().unwrap().to_string(), s);
        }
        assert_eq!("x86_64-manylinux2014".parse::<TargetPlatform>().unwrap().to_string(), "x86_64-manylinux_2_17");
        for bad in ["x86_64", "x86_64-linux", "x86_64-manylinux_2", "X86-manylinux_2_17", "-manylinux_2_17"] {
            assert!(bad.parse::<TargetPlatform>().is_err(), "{bad}");
        }
        let amd64 = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
        let p = TargetPlatform::for_image(&amd64, Libc::Glibc { major: 2, minor: 36 }).unwrap();
        assert_eq!(p.to_string(), "x86_64-manylinux_2_36");
    }

    #[test]
    fn older_glibc_locks_run_on_newer_bases_only() {
        let p = |s: &str| s.parse::<TargetPlatform>().unwrap();
        assert!(p("x86_64-manylinux_2_28").runs_on(&p("x86_64-manylinux_2_36")));
        assert!(!p("x86_64-manylinux_2_36").runs_on(&p("x86_64-manylinux_2_31")));
        assert!(!p("x86_64-manylinux_2_28").runs_on(&p("aarch64-manylinux_2_36")));
        assert!(!p("x86_64-musllinux_1_2").runs_on(&p("x86_64-manylinux_2_36")));
    }

    #[test]
    fn tags_rank_like_pip() {
        let t = target("3.11", "x86_64-manylinux_2_36");
        let ranks = t.tag_ranks();
        let rank = |n: &str| ranks.rank(&wheel(n));
        let order = [
            "a-1-cp311-cp311-manylinux_2_36_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_17_x86_64.whl",
            "a-1-cp311-cp311-manylinux1_x86_64.whl",
            "a-1-cp311-cp311-linux_x86_64.whl",
            "a-1-cp311-abi3-manylinux_2_28_x86_64.whl",
            "a-1-cp38-abi3-manylinux_2_28_x86_64.whl",
            "a-1-py3-none-manylinux_2_28_x86_64.whl",
            "a-1-cp311-none-any.whl",
            "a-1-py3-none-any.whl",
            "a-1-py2.py30-none-any.whl",
        ];
        let ranked: Vec<usize> = order.iter().map(|n| rank(n).unwrap_or_else(|| panic!("{n} should fit"))).collect();
        assert!(ranked.windows(2).all(|w| w[0] < w[1]), "{ranked:?}");
        for misfit in [
            "a-1-cp312-cp312-manylinux_2_17_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_39_x86_64.whl",
            "a-1-cp311-cp311-musllinux_1_2_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_17_aarch64.whl",
            "a-1-cp311-cp311-macosx_11_0_arm64.whl",
            "a-1-cp312-abi3-manylinux_2_17_x86_64.whl",
            "a-1-py2-none-any.whl",
        ] {
            assert_eq!(rank(misfit), None, "{misfit}");
        }
        let musl = target("3.12", "aarch64-musllinux_1_2").tag_ranks();
        assert!(musl.rank(&wheel("a-1-cp312-cp312-musllinux_1_1_aarch64.whl")).is_some());
        assert!(musl.rank(&wheel("a-1-cp312-cp312-manylinux_2_17_aarch64.whl")).is_none());
    }

    #[test]
    fn the_platform_wheel_beats_the_pure_one_and_builds_break_ties() {
        // soundfile ships both; only the manylinux one carries libsndfile.
        let ranks = target("3.11", "x86_64-manylinux_2_36").tag_ranks();
        let wheels = [
            wheel("soundfile-0.14.0-py2.py3-none-any.whl"),
            wheel("soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl"),
            wheel("soundfile-0.14.0-py2.py3-none-macosx_11_0_arm64.whl"),
        ];
        assert_eq!(best_wheel(&ranks, &wheels, |w| w).unwrap(), &wheels[1]);
        let builds = [wheel("x-1.0-1-py3-none-any.whl"), wheel("x-1.0-3-py3-none-any.whl"), wheel("x-1.0-py3-none-any.whl")];
        assert_eq!(best_wheel(&ranks, &builds, |w| w).unwrap(), &builds[1]);
        assert_eq!(best_wheel(&ranks, &wheels[2..], |w| w), None);
    }

    #[test]
    fn markers_evaluate_for_the_target() {
        let env = target("3.11.2", "x86_64-manylinux_2_36").marker_environment().unwrap();
        let yes = |m: &str| m.parse::<pep508_rs::MarkerTree>().unwrap().evaluate(&env, &[]);
        assert!(yes("sys_platform == 'linux' and platform_machine == 'x86_64'"));
        assert!(yes("python_full_version >= '3.11.2' and implementation_name == 'cpython'"));
        assert!(!yes("python_version < '3.11'"));
        assert!(!yes("sys_platform == 'win32'"));
    }
}
