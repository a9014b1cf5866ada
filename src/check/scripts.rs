//! `check` of a taskmaster script: it compiles; it uses no variable the
//! engine does not give it (Rhai's strict variables mode, with `task`,
//! `payload` and `_taskee_` declared as the engine declares them); and
//! every taskee it names literally — `_taskee_ = "name"`, `return "name"`,
//! or a string the script ends with (SPEC 5) — resolves to a tasker of a
//! domain it serves.

use std::path::Path;

use rhai::{ASTNode, Dynamic, Expr, ParseErrorType, Position, Scope, Stmt, AST};

use super::Problem;
use crate::layout::Root;
use crate::model::names::{Domain, Taskee};
use crate::sandbox::{lowercase_first, sandbox_engine};
use crate::text::{closest, quoted};
use crate::userfile;

/// The variables the engine puts in a taskmaster's scope (SPEC 5).
pub const ENGINE_VARIABLES: [&str; 3] = ["task", "payload", "_taskee_"];

/// Checks `tsk/<dir>/taskmaster.rhai` at `path`.
pub(super) fn check_taskmaster(root: &Root, dir: &str, path: &Path) -> Vec<Problem> {
    let rel = root.relative(path).to_path_buf();
    let source = match userfile::read_string(path, userfile::CONFIG_LIMIT) {
        Ok(s) => s,
        Err(e) => {
            return vec![Problem::new(rel, format!("cannot read: {e}")).fix(
            "make it a readable script file (the engine fails every task of the domain until then)",
        )]
        }
    };
    let ast = match sandbox_engine().compile(&source) {
        Ok(ast) => ast,
        Err(e) => {
            let line = e.1.line();
            return vec![Problem::new(
                rel,
                format!("syntax error: {}", lowercase_first(&e.to_string())),
            )
            .at(line)
            .fix(
                "correct the script there (the engine fails every task of the domain until then)",
            )];
        }
    };
    let mut problems: Vec<Problem> = undefined_variable(&source, &rel).into_iter().collect();
    for (name, line) in literal_taskees(&ast) {
        if let Some(p) = unresolved(root, dir, &rel, &name, line) {
            problems.push(p);
        }
    }
    problems
}

/// The first variable the script reads or assigns without declaring it,
/// found by compiling it in strict variables mode.
fn undefined_variable(source: &str, rel: &Path) -> Option<Problem> {
    let mut engine = sandbox_engine();
    engine.set_strict_variables(true);
    let mut scope = Scope::new();
    for v in ENGINE_VARIABLES {
        scope.push(v, Dynamic::UNIT);
    }
    let e = engine.compile_with_scope(&scope, source).err()?;
    let ParseErrorType::VariableUndefined(name) = &*e.0 else {
        return None;
    };
    let hint = match closest(name, ENGINE_VARIABLES) {
        Some(c) => format!("did you mean {}? Otherwise ", quoted(c)),
        None => String::new(),
    };
    Some(
        Problem::new(rel, format!("undefined variable {}", quoted(name)))
            .at(e.1.line())
            .fix(format!(
                "{hint}declare it first (`let {name} = …;`); a taskmaster is given only `task`, `payload` and `_taskee_`"
            )),
    )
}

/// The taskee names written literally in a script, with their lines: the
/// string assigned to `_taskee_`, a string returned by `return`, and a
/// string the script evaluates to (its last statement, through `if`,
/// `switch`, blocks and `try`). Functions' bodies are not looked at.
pub fn literal_taskees(ast: &AST) -> Vec<(String, Option<usize>)> {
    let mut out = Vec::new();
    for stmt in ast.statements() {
        stmt.walk(&mut Vec::new(), &mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Stmt(Stmt::Assignment(x))) => {
                    let (op, bin) = &**x;
                    if let (false, Expr::Variable(v, ..), Expr::StringConstant(s, pos)) =
                        (op.is_op_assignment(), &bin.lhs, &bin.rhs)
                    {
                        if v.1.as_str() == "_taskee_" {
                            out.push(literal(s, *pos));
                        }
                    }
                }
                Some(ASTNode::Stmt(Stmt::Return(Some(e), ..))) => {
                    if let Expr::StringConstant(s, pos) = &**e {
                        out.push(literal(s, *pos));
                    }
                }
                _ => {}
            }
            true
        });
    }
    tail(ast.statements(), &mut out);
    out
}

fn literal(s: &str, pos: Position) -> (String, Option<usize>) {
    (s.to_string(), pos.line())
}

/// The strings a block of statements evaluates to.
fn tail(stmts: &[Stmt], out: &mut Vec<(String, Option<usize>)>) {
    match stmts.last() {
        Some(Stmt::Expr(e)) => tail_expr(e, out),
        Some(Stmt::If(fc, _)) | Some(Stmt::TryCatch(fc, _)) => {
            tail(fc.body.statements(), out);
            tail(fc.branch.statements(), out);
        }
        Some(Stmt::Block(b)) => tail(b.statements(), out),
        Some(Stmt::Switch(x, _)) => {
            for case in x.1.expressions.iter() {
                tail_expr(&case.rhs, out);
            }
        }
        _ => {}
    }
}

fn tail_expr(e: &Expr, out: &mut Vec<(String, Option<usize>)>) {
    match e {
        Expr::StringConstant(s, pos) => out.push(literal(s, *pos)),
        Expr::Stmt(block) => tail(block.statements(), out),
        _ => {}
    }
}

/// The directories of `tsk/` a taskmaster of `tsk/<dir>/` may find its
/// taskees in: its domain's branch and `any`, and the domains below it
/// (whose tasks it serves too); every directory for `tsk/any/`'s.
fn reachable_dirs(root: &Root, dir: &str) -> Vec<String> {
    let all: Vec<String> = std::fs::read_dir(root.tsk())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    let Ok(domain) = dir.parse::<Domain>() else {
        return all;
    };
    let mut dirs: Vec<String> = domain.branch().map(str::to_string).collect();
    dirs.push("any".into());
    let below = all.into_iter().filter(|n| {
        n.parse::<Domain>()
            .is_ok_and(|d| d != domain && d.is_in_branch_of(&domain))
    });
    dirs.extend(below);
    dirs
}

/// The entries of `tsk/<dir>/` named like taskees (not `flows/`).
fn taskee_names(root: &Root, dir: &str) -> Vec<String> {
    std::fs::read_dir(root.tsk().join(dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.parse::<Taskee>().is_ok() && n != "flows")
        .collect()
}

/// A problem unless `name` is a taskee that some reachable directory holds.
fn unresolved(
    root: &Root,
    dir: &str,
    rel: &Path,
    name: &str,
    line: Option<usize>,
) -> Option<Problem> {
    if name.parse::<Taskee>().is_err() {
        return Some(
            Problem::new(rel, format!("{} is not a valid taskee name", quoted(name)))
                .at(line)
                .fix("a taskee is [A-Za-z0-9][A-Za-z0-9_-]{0,63}: no dot, no slash"),
        );
    }
    let dirs = reachable_dirs(root, dir);
    let tsk = root.tsk();
    if dirs
        .iter()
        .any(|d| std::fs::symlink_metadata(tsk.join(d).join(name)).is_ok())
    {
        return None;
    }
    let names: Vec<String> = dirs.iter().flat_map(|d| taskee_names(root, d)).collect();
    let create = format!("tsk/{dir}/{name} (an executable, or a directory with a tasker.json)");
    let fix = match closest(name, &names) {
        Some(c) => format!("did you mean {}? Otherwise create {create}", quoted(c)),
        None => format!("create {create}"),
    };
    let looked = if dir == "any" {
        "looked in every directory of tsk/".to_string()
    } else {
        format!("looked in tsk/{dir} up its branch, in tsk/any and below tsk/{dir}")
    };
    Some(
        Problem::new(
            rel,
            format!("taskee {} resolves to no tasker ({looked})", quoted(name)),
        )
        .at(line)
        .fix(fix),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literals(src: &str) -> Vec<(String, Option<usize>)> {
        literal_taskees(&sandbox_engine().compile(src).unwrap())
    }

    #[test]
    fn literal_taskees_are_found_where_the_engine_takes_them() {
        let src = r#"
let x = "not a taskee";
if payload.kind == "report" {
    _taskee_ = "report";
} else if payload.kind == "text" {
    return "wordcount";
}
fn helper() { "inside a function" }
switch payload.n { 1 => "one", _ => { "other" } }
"#;
        let mut got = literals(src);
        got.sort();
        assert_eq!(
            got,
            [
                ("one".to_string(), Some(9)),
                ("other".to_string(), Some(9)),
                ("report".to_string(), Some(4)),
                ("wordcount".to_string(), Some(6)),
            ]
        );
        assert_eq!(
            literals("if payload.big { \"big\" } else { \"small\" }"),
            [("big".to_string(), Some(1)), ("small".to_string(), Some(1))]
        );
        assert!(literals("_taskee_ = task.tasker;").is_empty());
        assert!(literals("let a = \"x\"; a").is_empty());
    }
}
