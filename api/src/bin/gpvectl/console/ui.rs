//! Drawing. Only the visible rows of the actor table are built, so a node with thousands
//! of actors costs one screenful per frame.

use gpve_api::client::WatchLine;
use gpve_supervisor::EventKind;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table, Wrap};

use super::app::{App, Link, Row};
use crate::actors::{describe_text, utc_hms};
use crate::output;

/// Height of the events pane, borders included.
const EVENTS_PANE_ROWS: u16 = 9;

fn state_style(state: &str) -> Style {
    match state {
        "running" => Style::default().fg(Color::Green),
        "restarting" | "starting" => Style::default().fg(Color::Yellow),
        "failed" => Style::default().fg(Color::Red),
        _ => Style::default().fg(Color::DarkGray),
    }
}

fn event_text(line: &WatchLine) -> Option<String> {
    let WatchLine::Actor { node, event } = line else {
        return None;
    };
    let what = match &event.kind {
        EventKind::Started => "started".to_string(),
        EventKind::Stopped { reason } => {
            format!("stopped ({})", reason.as_deref().unwrap_or("normal"))
        }
        EventKind::Failed { reason } => format!("FAILED: {reason}"),
        EventKind::Restarted { restarts } => format!("restarted (restarts={restarts})"),
        EventKind::Escalated {
            reason,
            restarts_in_window,
        } => format!("ESCALATED after {restarts_in_window} restarts: {reason}"),
    };
    Some(format!(
        "{} {node} {} {what}",
        utc_hms(event.at_ms),
        event.path
    ))
}

/// Rows the table can show in a terminal of `height` lines.
pub fn table_height(height: u16) -> usize {
    // Status line, help line, events pane, table borders and header.
    usize::from(height.saturating_sub(2 + EVENTS_PANE_ROWS + 3))
}

pub fn draw(frame: &mut Frame, app: &mut App) {
    let [status, main, events, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(EVENTS_PANE_ROWS),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [table_area, detail_area] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(main);

    draw_status(frame, app, status);
    draw_table(frame, app, table_area);
    draw_detail(frame, app, detail_area);
    draw_events(frame, app, events);
    let help_text = if app.editing_filter {
        format!("filter: {}_   (Enter apply, Esc clear)", app.filter)
    } else {
        "q quit  ↑/↓ select  m mailbox  r msgs/s  s restarts  t tree  / filter  Esc clear".into()
    };
    frame.render_widget(
        Paragraph::new(help_text).style(Style::default().fg(Color::Cyan)),
        help,
    );
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let actors: usize = app
        .list
        .as_ref()
        .map(|l| l.nodes.iter().map(|n| n.count).sum())
        .unwrap_or(0);
    let (link, style) = match &app.link {
        Link::Connecting => ("connecting".to_string(), Style::default().fg(Color::Yellow)),
        Link::Connected => ("connected".to_string(), Style::default().fg(Color::Green)),
        Link::Disconnected(why) => (
            format!("disconnected, retrying ({why})"),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    let mut spans = vec![
        Span::styled(
            "gpve console ",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("{}  ", app.server)),
        Span::styled(link, style),
        Span::raw(format!("  actors: {actors}  sort: {}", app.sort.name())),
    ];
    if !app.filter.is_empty() {
        spans.push(Span::raw(format!("  filter: {}", app.filter)));
    }
    if let Some(why) = &app.events_down {
        spans.push(Span::styled(
            format!("  events: reconnecting ({why})"),
            Style::default().fg(Color::Yellow),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_table(frame: &mut Frame, app: &mut App, area: Rect) {
    let rows = app.rows();
    let height = usize::from(area.height.saturating_sub(3));
    let first = app.scroll_to_selection(&rows, height);
    let selected = app.selected_index(&rows);
    let visible: Vec<TableRow> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, r)| {
            let row = match r {
                Row::Node { node, count } => {
                    TableRow::new(vec![format!("node {node} ({count} actors)")])
                        .style(Style::default().add_modifier(Modifier::BOLD))
                }
                Row::Actor { depth, actor } => {
                    let label = if app.sort == super::app::Sort::Tree {
                        format!("{}{}", "  ".repeat(*depth), actor.id)
                    } else {
                        actor.path.clone()
                    };
                    let state = format!("{:?}", actor.state).to_lowercase();
                    TableRow::new(vec![
                        ratatui::text::Text::raw(label),
                        ratatui::text::Text::styled(state.clone(), state_style(&state)),
                        ratatui::text::Text::raw(actor.mailbox_depth.to_string()),
                        ratatui::text::Text::raw(format!("{:.1}", actor.msgs_per_s)),
                        ratatui::text::Text::raw(actor.restarts.to_string()),
                        ratatui::text::Text::raw(output::duration(actor.uptime_s)),
                    ])
                }
            };
            if Some(i) == selected {
                row.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        visible,
        [
            Constraint::Min(24),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(7),
        ],
    )
    .header(
        TableRow::new(vec![
            "ACTOR", "STATE", "MAILBOX", "MSGS/S", "RESTARTS", "UPTIME",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(format!(" actors ({} rows) ", rows.len())));
    frame.render_widget(table, area);
}

fn draw_detail(frame: &mut Frame, app: &App, area: Rect) {
    let text = match (&app.detail, &app.selected) {
        (Some(d), _) => describe_text(d),
        (None, Some(path)) => format!("{path}\nloading..."),
        (None, None) => "no actor selected".to_string(),
    };
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" detail ")),
        area,
    );
}

fn draw_events(frame: &mut Frame, app: &App, area: Rect) {
    let height = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = app
        .events
        .iter()
        .rev()
        .filter_map(event_text)
        .take(height)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(Line::from)
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" supervision events (UTC) ")),
        area,
    );
}
