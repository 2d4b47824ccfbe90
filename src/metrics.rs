//! The metrics registry: counters their owners keep, rendered in the Prometheus text format on
//! `/metrics`.
//!
//! Each subsystem owns its counters and writes them as a `Family`: the edge
//! (`edge::metrics`), the handlers (`sync::metrics`), the bus, the HTTP server
//! (`http::metrics`), the verification gate (`accounts::gate`), the embedded broker and the
//! bridge (`ws::metrics`). `server` registers them in one [`Metrics`], rendered in that fixed
//! order. A counter with a label is a `Labeled`: one atomic per value of its `Label`, found
//! by the value's place (the enum's discriminant), so counting on the hot path is one relaxed
//! add, no lock and no search.
//!
//! This module imports nothing of Cradle's.

use std::collections::HashMap;
use std::fmt::{self, Display, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A label of a counter family: every value (`ALL`, the exposition order) and each value's
/// place in it, found without a search.
pub(crate) trait Label: Copy + fmt::Debug + 'static {
    /// Every value, in exposition order.
    const ALL: &'static [Self];

    /// This value's place in `ALL`; a value past its end is one its family does not count.
    fn index(self) -> usize;

    /// The label's value in the exposition.
    fn as_str(self) -> &'static str;
}

/// Implements [`Label`] for fieldless enums with an inherent `ALL` that lists the variants in
/// declaration order (so the discriminant is the place; `assert_places` checks it) and an
/// inherent `as_str`.
macro_rules! labels {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::metrics::Label for $t {
            const ALL: &'static [Self] = &<$t>::ALL;

            fn index(self) -> usize {
                self as usize
            }

            fn as_str(self) -> &'static str {
                <$t>::as_str(self)
            }
        }
    )*};
}
pub(crate) use labels;

/// Panics unless every value of `L` is at its place in `L::ALL` (for the owners' tests).
#[cfg(test)]
pub(crate) fn assert_places<L: Label>() {
    for (i, l) in L::ALL.iter().enumerate() {
        assert_eq!(l.index(), i, "{l:?} is not at its place in ALL");
    }
}

/// A counter per value of the label `L`.
pub(crate) struct Labeled<L: Label> {
    counts: Box<[AtomicU64]>,
    label: PhantomData<L>,
}

impl<L: Label> Default for Labeled<L> {
    fn default() -> Self {
        Self {
            counts: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            label: PhantomData,
        }
    }
}

impl<L: Label> fmt::Debug for Labeled<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(L::ALL.iter().map(|l| (l.as_str(), self.get(*l))))
            .finish()
    }
}

impl<L: Label> Labeled<L> {
    /// Adds one to the counter of `label`.
    pub(crate) fn inc(&self, label: L) {
        if let Some(c) = self.counts.get(label.index()) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// The counter of `label`.
    pub(crate) fn get(&self, label: L) -> u64 {
        self.counts
            .get(label.index())
            .map_or(0, |c| c.load(Relaxed))
    }
}

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A family's name, help text and type: its `# HELP` and `# TYPE` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Desc {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

impl Desc {
    /// A counter family.
    pub(crate) const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: Kind::Counter,
        }
    }

    /// A gauge family.
    pub(crate) const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: Kind::Gauge,
        }
    }
}

/// The one family several owners write: the handlers' drops (status, stations) and the edge's
/// (inbox).
pub(crate) const MESSAGES_DROPPED: Desc = Desc::counter(
    "cradle_mqtt_messages_dropped_total",
    "MQTT messages acknowledged and dropped without effect, by family and reason.",
);

/// Counters one owner keeps, written into the exposition at every scrape.
pub(crate) trait Family: Send + Sync {
    /// Writes the owner's families.
    fn render(&self, out: &mut Exposition);
}

/// The Prometheus text being written: families in the order they were first written, each
/// family's samples together under one `# HELP`/`# TYPE`, also when several owners write one
/// ([`MESSAGES_DROPPED`]).
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    /// Each family's description and sample lines, in first-written order.
    families: Vec<(Desc, String)>,
    /// A family's place in `families`, by name.
    places: HashMap<&'static str, usize>,
}

impl Exposition {
    /// The samples of the family `desc`, begun the first time it is written.
    pub(crate) fn family(&mut self, desc: Desc) -> Samples<'_> {
        let place = match self.places.get(desc.name) {
            Some(&place) => place,
            None => {
                self.families.push((desc, String::new()));
                self.places.insert(desc.name, self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let (first, out) = &mut self.families[place];
        debug_assert_eq!(*first, desc, "one family, two descriptions");
        Samples {
            name: desc.name,
            out,
        }
    }

    /// A counter family of one sample without labels.
    pub(crate) fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.family(Desc::counter(name, help)).sample("", value);
    }

    /// A gauge family of one sample without labels.
    pub(crate) fn gauge(&mut self, name: &'static str, help: &'static str, value: impl Display) {
        self.family(Desc::gauge(name, help)).sample("", value);
    }

    /// The text: every family's `# HELP` and `# TYPE` lines, then its samples.
    pub(crate) fn finish(self) -> String {
        let mut text = String::with_capacity(8192);
        for (desc, samples) in self.families {
            let kind = match desc.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let name = desc.name;
            let _ = writeln!(text, "# HELP {name} {}\n# TYPE {name} {kind}", desc.help);
            text.push_str(&samples);
        }
        text
    }
}

/// Writes the samples of one family.
pub(crate) struct Samples<'a> {
    name: &'static str,
    out: &'a mut String,
}

impl Samples<'_> {
    /// One sample, `name{labels} value` (`name value` when `labels` is empty).
    pub(crate) fn sample(&mut self, labels: &str, value: impl Display) -> &mut Self {
        let name = self.name;
        let _ = match labels {
            "" => writeln!(self.out, "{name} {value}"),
            _ => writeln!(self.out, "{name}{{{labels}}} {value}"),
        };
        self
    }

    /// One sample per value of `L`, in `L::ALL` order: `name{fixed key="value"} count`, where
    /// `fixed` is empty or labels with a trailing comma.
    pub(crate) fn labeled<L: Label>(
        &mut self,
        fixed: &str,
        key: &str,
        counts: &Labeled<L>,
    ) -> &mut Self {
        for label in L::ALL {
            let labels = format!("{fixed}{key}=\"{}\"", label.as_str());
            self.sample(&labels, counts.get(*label));
        }
        self
    }
}

/// Every registered family, rendered in registration order.
#[derive(Default)]
pub struct Metrics {
    families: Vec<Arc<dyn Family>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("families", &self.families.len())
            .finish()
    }
}

impl Metrics {
    /// The registry with `family` registered after the others.
    pub(crate) fn with(mut self, family: Arc<dyn Family>) -> Self {
        self.families.push(family);
        self
    }

    /// Renders every registered family, then `scraped` (figures taken at this scrape).
    pub(crate) fn render(&self, scraped: &[&dyn Family]) -> String {
        let mut out = Exposition::default();
        for family in &self.families {
            family.render(&mut out);
        }
        for family in scraped {
            family.render(&mut out);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Color {
        Red,
        Green,
    }

    impl Color {
        const ALL: [Color; 2] = [Self::Red, Self::Green];

        fn as_str(self) -> &'static str {
            match self {
                Self::Red => "red",
                Self::Green => "green",
            }
        }
    }

    labels!(Color);

    struct Paint(Labeled<Color>);

    impl Family for Paint {
        fn render(&self, out: &mut Exposition) {
            out.family(Desc::counter("paint_total", "Paint used."))
                .labeled("", "color", &self.0);
        }
    }

    struct Drops(u64);

    impl Family for Drops {
        fn render(&self, out: &mut Exposition) {
            out.family(MESSAGES_DROPPED)
                .sample("family=\"test\"", self.0);
        }
    }

    #[test]
    fn a_labeled_counter_counts_each_value_in_its_place() {
        assert_places::<Color>();
        let paint = Labeled::<Color>::default();
        paint.inc(Color::Green);
        paint.inc(Color::Green);
        assert_eq!((paint.get(Color::Red), paint.get(Color::Green)), (0, 2));
    }

    #[test]
    fn families_render_in_registration_order_and_one_family_stays_together() {
        let paint = Paint(Labeled::default());
        paint.0.inc(Color::Red);
        let metrics = Metrics::default()
            .with(Arc::new(Drops(1)))
            .with(Arc::new(paint))
            .with(Arc::new(Drops(2)));
        let gauge = |out: &mut Exposition| out.gauge("now", "Now.", 7);
        struct Scraped<F>(F);
        impl<F: Fn(&mut Exposition) + Send + Sync> Family for Scraped<F> {
            fn render(&self, out: &mut Exposition) {
                (self.0)(out)
            }
        }
        assert_eq!(
            metrics.render(&[&Scraped(gauge)]),
            "# HELP cradle_mqtt_messages_dropped_total MQTT messages acknowledged and dropped without effect, by family and reason.\n\
             # TYPE cradle_mqtt_messages_dropped_total counter\n\
             cradle_mqtt_messages_dropped_total{family=\"test\"} 1\n\
             cradle_mqtt_messages_dropped_total{family=\"test\"} 2\n\
             # HELP paint_total Paint used.\n\
             # TYPE paint_total counter\n\
             paint_total{color=\"red\"} 1\n\
             paint_total{color=\"green\"} 0\n\
             # HELP now Now.\n\
             # TYPE now gauge\n\
             now 7\n"
        );
    }
}
