//! The console's state and its reactions to keys and server updates; no terminal here, so
//! it is unit-tested directly.

use std::collections::VecDeque;

use gpve_api::client::{ActorDetail, ActorView, ActorsList, WatchLine};

/// Supervision events kept for the bottom pane.
pub const MAX_EVENTS_KEPT: usize = 200;

/// Row order of the actor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Supervision tree order, indented.
    Tree,
    /// Deepest mailbox first.
    Mailbox,
    /// Highest message rate first.
    Rate,
    /// Most restarts first.
    Restarts,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Sort::Tree => "tree",
            Sort::Mailbox => "mailbox",
            Sort::Rate => "msgs/s",
            Sort::Restarts => "restarts",
        }
    }
}

/// One table row.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// A node heading (tree order only).
    Node { node: String, count: usize },
    /// An actor with its depth below the node.
    Actor { depth: usize, actor: Box<ActorView> },
}

/// Connection to the server as the console last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Connected,
    /// The last poll failed; the reason is shown and polling goes on.
    Disconnected(String),
}

/// What the feed tasks report.
#[derive(Debug)]
pub enum Update {
    Tree(ActorsList),
    Detail(Box<ActorDetail>),
    PollFailed(String),
    Event(WatchLine),
    EventsDown(String),
}

/// Everything the screen shows.
#[derive(Debug)]
pub struct App {
    pub server: String,
    pub list: Option<ActorsList>,
    pub detail: Option<ActorDetail>,
    pub link: Link,
    /// Why the event stream is down (`None` while it is up).
    pub events_down: Option<String>,
    pub events: VecDeque<WatchLine>,
    pub sort: Sort,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing_filter: bool,
    /// Path of the selected actor (kept across refreshes and re-sorting).
    pub selected: Option<String>,
    /// First visible row.
    pub offset: usize,
    pub quit: bool,
}

impl App {
    pub fn new(server: String) -> Self {
        App {
            server,
            list: None,
            detail: None,
            link: Link::Connecting,
            events_down: Some("connecting".into()),
            events: VecDeque::new(),
            sort: Sort::Tree,
            filter: String::new(),
            editing_filter: false,
            selected: None,
            offset: 0,
            quit: false,
        }
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Tree(list) => {
                self.list = Some(list);
                self.link = Link::Connected;
                if self.selected.is_none() {
                    self.selected = self.actor_paths().into_iter().next();
                }
            }
            Update::Detail(d) => {
                if self.selected.as_deref() == Some(d.actor.path.as_str()) {
                    self.detail = Some(*d);
                }
            }
            Update::PollFailed(reason) => self.link = Link::Disconnected(reason),
            Update::Event(line) => {
                self.events_down = None;
                if matches!(line, WatchLine::Actor { .. }) {
                    if self.events.len() == MAX_EVENTS_KEPT {
                        self.events.pop_front();
                    }
                    self.events.push_back(line);
                }
            }
            Update::EventsDown(why) => self.events_down = Some(why),
        }
    }

    fn matches(&self, a: &ActorView) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let f = self.filter.to_lowercase();
        a.path.to_lowercase().contains(&f)
            || a.kind.to_lowercase().contains(&f)
            || format!("{:?}", a.state).to_lowercase().contains(&f)
    }

    /// The rows to show, in order, filtered.
    pub fn rows(&self) -> Vec<Row> {
        let Some(list) = &self.list else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        match self.sort {
            Sort::Tree => {
                for n in &list.nodes {
                    rows.push(Row::Node {
                        node: n.node.clone(),
                        count: n.count,
                    });
                    for root in &n.roots {
                        for (depth, a) in root.flatten() {
                            if self.matches(a) {
                                rows.push(Row::Actor {
                                    depth: depth + 1,
                                    actor: Box::new(a.clone()),
                                });
                            }
                        }
                    }
                }
            }
            sort => {
                let mut actors: Vec<ActorView> = list
                    .nodes
                    .iter()
                    .flat_map(|n| n.roots.iter())
                    .flat_map(|r| r.flatten().into_iter().map(|(_, a)| a.clone()))
                    .filter(|a| self.matches(a))
                    .collect();
                actors.sort_by(|a, b| {
                    let order = match sort {
                        Sort::Mailbox => b.mailbox_depth.cmp(&a.mailbox_depth),
                        Sort::Rate => b.msgs_per_s.total_cmp(&a.msgs_per_s),
                        Sort::Restarts => b.restarts.cmp(&a.restarts),
                        Sort::Tree => std::cmp::Ordering::Equal,
                    };
                    order.then_with(|| a.path.cmp(&b.path))
                });
                rows.extend(actors.into_iter().map(|actor| Row::Actor {
                    depth: 0,
                    actor: Box::new(actor),
                }));
            }
        }
        rows
    }

    fn actor_paths(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter_map(|r| match r {
                Row::Actor { actor, .. } => Some(actor.path),
                Row::Node { .. } => None,
            })
            .collect()
    }

    /// Index of the selected row in `rows`.
    pub fn selected_index(&self, rows: &[Row]) -> Option<usize> {
        let sel = self.selected.as_deref()?;
        rows.iter()
            .position(|r| matches!(r, Row::Actor { actor, .. } if actor.path == sel))
    }

    /// Move the selection by `delta` actor rows.
    pub fn move_selection(&mut self, delta: isize) {
        let paths = self.actor_paths();
        if paths.is_empty() {
            self.selected = None;
            return;
        }
        let current = self
            .selected
            .as_ref()
            .and_then(|s| paths.iter().position(|p| p == s))
            .unwrap_or(0);
        let last = paths.len() - 1;
        let next = current.saturating_add_signed(delta).min(last);
        self.selected = Some(paths[next].clone());
        self.detail = None;
    }

    fn toggle_sort(&mut self, sort: Sort) {
        self.sort = if self.sort == sort { Sort::Tree } else { sort };
        self.offset = 0;
    }

    /// React to one key. `page` is the number of visible rows.
    pub fn key(&mut self, key: Key, page: usize) {
        if self.editing_filter {
            match key {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                _ => {}
            }
            self.offset = 0;
            self.reselect_if_hidden();
            return;
        }
        let page = page.max(1) as isize;
        match key {
            Key::Char('q') => self.quit = true,
            Key::Char('m') => self.toggle_sort(Sort::Mailbox),
            Key::Char('r') => self.toggle_sort(Sort::Rate),
            Key::Char('s') => self.toggle_sort(Sort::Restarts),
            Key::Char('t') => self.toggle_sort(Sort::Tree),
            Key::Char('/') => self.editing_filter = true,
            Key::Esc => {
                self.filter.clear();
                self.reselect_if_hidden();
            }
            Key::Up | Key::Char('k') => self.move_selection(-1),
            Key::Down | Key::Char('j') => self.move_selection(1),
            Key::PageUp => self.move_selection(-page),
            Key::PageDown => self.move_selection(page),
            Key::Home => self.move_selection(isize::MIN / 2),
            Key::End => self.move_selection(isize::MAX / 2),
            _ => {}
        }
    }

    fn reselect_if_hidden(&mut self) {
        let paths = self.actor_paths();
        if !self.selected.as_ref().is_some_and(|s| paths.contains(s)) {
            self.selected = paths.into_iter().next();
            self.detail = None;
        }
    }

    /// Keep the selected row inside the `height` visible rows; returns the first visible.
    pub fn scroll_to_selection(&mut self, rows: &[Row], height: usize) -> usize {
        let height = height.max(1);
        if let Some(i) = self.selected_index(rows) {
            if i < self.offset {
                self.offset = i;
            } else if i >= self.offset + height {
                self.offset = i + 1 - height;
            }
        }
        self.offset = self.offset.min(rows.len().saturating_sub(height));
        self.offset
    }
}

/// Keys the console reacts to (decoupled from crossterm for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpve_api::client::{ActorTree, NodeActors};
    use gpve_supervisor::ActorState;

    fn actor(path: &str, mailbox: u64, rate: f64, restarts: u64) -> ActorView {
        ActorView {
            path: path.into(),
            kind: "k".into(),
            id: path.rsplit('/').next().unwrap_or(path).into(),
            node: "n1".into(),
            parent: path.rsplit_once('/').map(|(p, _)| p.to_string()),
            state: ActorState::Running,
            mailbox_depth: mailbox,
            messages_handled: 0,
            msgs_per_s: rate,
            restarts,
            uptime_s: Some(1),
            started_at_ms: Some(0),
            last_failure: None,
            owns: Default::default(),
        }
    }

    fn sample(n: usize) -> ActorsList {
        let children = (0..n)
            .map(|i| ActorTree {
                actor: actor(
                    &format!("root/c{i:04}"),
                    i as u64,
                    (n - i) as f64,
                    (i % 7) as u64,
                ),
                children: Vec::new(),
            })
            .collect();
        ActorsList {
            nodes: vec![NodeActors {
                node: "n1".into(),
                count: n + 1,
                roots: vec![ActorTree {
                    actor: actor("root", 0, 0.0, 0),
                    children,
                }],
                error: None,
            }],
        }
    }

    #[test]
    fn sorts_filters_and_keeps_selection() {
        let mut app = App::new("s".into());
        app.apply(Update::Tree(sample(1_000)));
        assert_eq!(app.selected.as_deref(), Some("root"));
        let rows = app.rows();
        assert_eq!(rows.len(), 1_002, "node heading + root + 1000 children");
        app.key(Key::Char('m'), 20);
        match &app.rows()[0] {
            Row::Actor { actor, .. } => assert_eq!(actor.path, "root/c0999"),
            other => panic!("{other:?}"),
        }
        app.key(Key::Char('r'), 20);
        match &app.rows()[0] {
            Row::Actor { actor, .. } => assert_eq!(actor.path, "root/c0000"),
            other => panic!("{other:?}"),
        }
        app.key(Key::Char('s'), 20);
        match &app.rows()[0] {
            Row::Actor { actor, .. } => assert_eq!(actor.restarts, 6),
            other => panic!("{other:?}"),
        }
        app.key(Key::Char('s'), 20);
        assert_eq!(app.sort, Sort::Tree);
        for c in "/c0042".chars() {
            app.key(Key::Char(c), 20);
        }
        app.key(Key::Enter, 20);
        let rows = app.rows();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(app.selected.as_deref(), Some("root/c0042"));
        app.key(Key::Esc, 20);
        assert_eq!(app.rows().len(), 1_002);
        assert_eq!(app.selected.as_deref(), Some("root/c0042"));
        app.key(Key::End, 20);
        let rows = app.rows();
        let first = app.scroll_to_selection(&rows, 20);
        assert_eq!(first, 1_002 - 20);
        app.key(Key::Char('q'), 20);
        assert!(app.quit);
    }
}
